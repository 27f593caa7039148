"""The lorax-bench command end to end against the stub server: sweeps, files, replay."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorax.bench.cli import main
from lorax.bench.stub import StubServer

FAST = ["--input-len", "uniform:3:12", "--output-len", "uniform:2:6", "--no-progress"]


def _run(
    stub: StubServer, tmp_path: Path, *args: str, name: str = "results.json"
) -> dict[str, Any]:
    out = tmp_path / name
    assert main(["--url", stub.url, "--output", str(out), *FAST, *args]) == 0
    return json.loads(out.read_text())


def test_sweep_over_adapters_writes_results_and_plot(
    stub: StubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "sweep.png"
    doc = _run(
        stub, tmp_path,
        "--num-requests", "12", "--rate", "200,inf", "--max-concurrency", "8",
        "--num-adapters", "base,2,4", "--adapter-dist", "zipf", "--plot", str(plot),
        "--save-requests",
    )  # fmt: skip
    assert [(p["num_adapters"], p["rate"]) for p in doc["points"]] == [
        (0, "200"), (0, "inf"), (2, "200"), (2, "inf"), (4, "200"), (4, "inf"),
    ]  # fmt: skip
    for point in doc["points"]:
        s = point["summary"]
        assert s["requests"] == {"issued": 12, "completed": 12, "failed": 0}
        assert s["errors"] == {}
        assert s["tokens"]["output_len_mismatch"] == 0
        # The stub counts a token per word plus BOS: fitted prompts hit their target exactly.
        assert s["tokens"]["prompt_len_error_mean"] == 0
        assert s["tokens"]["prompt_len_mismatch"] == 0
        assert s["throughput"]["output_tokens_per_s"] > 0
        assert s["throughput"]["steady_output_tokens_per_s"] > 0
        assert s["slo"]["attainment"] == 1.0
        assert "token_times_s" not in point["requests"][0]  # the summary's, not the file's
        adapters = {r["adapter_id"] for r in point["requests"]}
        if point["num_adapters"] == 0:
            assert adapters == {None}
        else:
            assert adapters <= {f"adapter-{i}" for i in range(point["num_adapters"])}
    assert doc["prompts"] == {
        "method": "tokenize",
        "tokens_per_word": 1.0,
        "special_tokens": 1,
        "fit": "exact",
    }
    assert doc["server"]["info"]["model_id"] == "stub"
    assert doc["workload"]["adapter_counts"] == [0, 2, 4]
    assert doc["complete"] is True
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert len(stub.generate_bodies()) == 6 * 12
    table = capsys.readouterr().out
    assert "out tok/s" in table
    assert "base" in table


def test_rate_sweep_at_fractions_of_saturation(stub: StubServer, tmp_path: Path) -> None:
    plot = tmp_path / "rates.png"
    doc = _run(
        stub, tmp_path,
        "--num-requests", "10", "--rate", "inf,0.5x,50", "--max-concurrency", "4",
        "--plot", str(plot), "--warmup", "3",
    )  # fmt: skip
    saturation, half, fixed = doc["points"]
    assert doc["workload"]["warmup"] == {
        "requests": {"issued": 3, "completed": 3, "failed": 0},
        "errors": {},
    }
    assert len(stub.generate_bodies()) == 3 + 3 * 10
    assert saturation["rate_rps"] is None
    measured = saturation["summary"]["throughput"]["requests_per_s"]
    assert half["rate"] == "0.5x"
    assert half["rate_rps"] == pytest.approx(measured / 2)
    assert fixed["rate_rps"] == 50
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_same_seed_replays_the_same_requests(stub: StubServer, tmp_path: Path) -> None:
    args = ["--num-requests", "15", "--rate", "inf", "--num-adapters", "5", "--seed", "11"]

    def requests_seen() -> list[tuple[str, str | None, int]]:
        bodies = stub.generate_bodies()
        stub.reset()
        return sorted(
            (b["inputs"], b["parameters"].get("adapter_id"), b["parameters"]["max_new_tokens"])
            for b in bodies
        )

    _run(stub, tmp_path, *args, "--save-trace", str(tmp_path / "a.jsonl"))
    first = requests_seen()
    _run(stub, tmp_path, *args, "--save-trace", str(tmp_path / "b.jsonl"))
    assert requests_seen() == first
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    # Replaying the saved trace file sends the same requests again.
    _run(
        stub, tmp_path, "--trace", str(tmp_path / "a.jsonl"), "--rate", "inf", "--num-adapters", "5"
    )
    assert requests_seen() == first
    _run(stub, tmp_path, *args[:-1], "12")
    assert requests_seen() != first


def test_trace_timestamps_replay(stub: StubServer, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    lines = [{"input_len": 4, "output_len": 2, "arrival_s": t} for t in (0.0, 0.3, 0.35)]
    trace.write_text("".join(json.dumps(line) + "\n" for line in lines))
    doc = _run(stub, tmp_path, "--trace", str(trace), "--rate", "trace", "--save-requests")
    (point,) = doc["points"]
    assert point["rate"] == "trace"
    assert [r["scheduled_s"] for r in point["requests"]] == [0.0, 0.3, 0.35]
    assert point["summary"]["requests"]["completed"] == 3


def test_openai_protocol_without_tokenize_assumes_a_ratio(stub: StubServer, tmp_path: Path) -> None:
    stub.behaviour.tokenize = False
    doc = _run(
        stub, tmp_path,
        "--protocol", "openai", "--model", "base", "--num-requests", "6", "--rate", "inf",
        "--num-adapters", "3",
    )  # fmt: skip
    assert doc["prompts"]["method"] == "assumed"
    assert doc["prompts"]["fit"] == "mean"
    assert doc["prompts"]["tokens_per_word"] == pytest.approx(1 / 0.75)
    summary = doc["points"][0]["summary"]
    assert summary["requests"]["completed"] == 6
    assert summary["tokens"]["output_len_mismatch"] == 0
    assert all(b["stream"] for b in stub.generate_bodies())


def test_errors_appear_in_the_results(stub: StubServer, tmp_path: Path) -> None:
    stub.behaviour.failures = {"adapter-1": "generation"}
    doc = _run(stub, tmp_path, "--num-requests", "20", "--rate", "inf", "--num-adapters", "2")
    s = doc["points"][0]["summary"]
    assert s["errors"]["generation"] == s["requests"]["failed"] > 0
    assert s["requests"]["completed"] + s["requests"]["failed"] == 20
    assert s["slo"]["attainment"] == pytest.approx(s["requests"]["completed"] / 20)


def test_fraction_of_a_failed_saturation_is_skipped(stub: StubServer, tmp_path: Path) -> None:
    stub.behaviour.failures = {"adapter-0": "generation"}
    out = tmp_path / "r.json"
    args = ["--num-requests", "4", "--rate", "inf,0.5x", "--num-adapters", "1"]
    assert main(["--url", stub.url, "--output", str(out), *FAST, *args]) == 1  # nothing completed
    saturation, half = json.loads(out.read_text())["points"]
    assert saturation["summary"]["errors"] == {"generation": 4}
    assert half["skipped"] == "no request completed at rate inf"
    assert half["summary"]["requests"]["issued"] == 0


def test_a_server_that_is_down_exits_1(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    code = main(["--url", "http://127.0.0.1:9", "--output", str(out), *FAST,
                 "--num-requests", "2", "--rate", "inf", "--words-per-token", "1"])  # fmt: skip
    assert code == 1
    assert json.loads(out.read_text())["points"][0]["summary"]["errors"] == {"connection": 2}


@pytest.mark.parametrize(
    "bad",
    [
        ["--rate", "0.5x"],  # a fraction needs a saturation point first
        ["--rate", "-1"],
        ["--num-adapters", "-2"],
        ["--adapter-template", "no-placeholder"],
        ["--input-len", "uniform:5:1"],
        ["--max-concurrency", "0"],
        ["--rate", "trace"],  # a drawn trace has no timestamps
        ["--trace", "/no/such/trace.jsonl"],
    ],
)
def test_bad_arguments_are_usage_errors(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--no-progress", *bad])
    assert exc.value.code == 2


def test_stub_command_serves_until_interrupted() -> None:
    port = _free_port()
    command = [sys.executable, "-m", "lorax.bench.stub", "--port", str(port), "--token-delay", "0"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, preexec_fn=_interruptible
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == f"stub server on http://127.0.0.1:{port}"
            body = {"inputs": "a b", "parameters": {"max_new_tokens": 3}}
            response = httpx.post(f"http://127.0.0.1:{port}/generate_stream", json=body, timeout=10)
            assert response.text.count("data:") == 3
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def _interruptible() -> None:
    """Ctrl-C reaches the child even when the test run itself was started in the background,
    where the shell leaves SIGINT ignored and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_results_are_written_after_every_point(stub: StubServer, tmp_path: Path) -> None:
    # The second point's requests hang: interrupting there keeps the first point on disk.
    stub.behaviour.failures = {"slow": "hang"}
    out = tmp_path / "r.json"
    command = [
        sys.executable, "-m", "lorax.bench.cli", "--url", stub.url, "--output", str(out), *FAST,
        "--num-requests", "6", "--rate", "inf", "--num-adapters", "1,2",
        "--adapter-ids", "ok,slow", "--words-per-token", "1",
    ]  # fmt: skip
    with subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible
    ) as proc:
        try:
            deadline = time.monotonic() + 60
            while not (out.exists() and json.loads(out.read_text() or "{}").get("points")):
                assert time.monotonic() < deadline
                assert proc.poll() is None
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 130
            assert proc.stderr is not None
            assert "interrupted" in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    doc = json.loads(out.read_text())
    assert doc["complete"] is False
    assert [p["num_adapters"] for p in doc["points"]] == [1]
    assert doc["points"][0]["summary"]["requests"]["completed"] == 6


def test_progress_bar_and_missing_extras(
    stub: StubServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "r.json"
    args = ["--url", stub.url, "--output", str(out), "--input-len", "fixed:4", "--output-len",
            "fixed:2", "--num-requests", "5", "--rate", "inf", "--num-adapters", "1,3"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "1 adapter @ inf" in err
    assert "3 adapters @ inf" in err
    assert "5/5" in err
    # Without the bench extra: the run still completes, without a bar and without a plot.
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([*args, "--plot", str(tmp_path / "p.png")]) == 0
    err = capsys.readouterr().err
    assert "no progress bar without tqdm" in err
    assert "no plot without matplotlib" in err
    assert not (tmp_path / "p.png").exists()
    assert json.loads(out.read_text())["complete"] is True
