"""lorax-bench against the real gateway: the synthetic backend in-process (fast), and the
embedded default (``lorax-launcher --model-id demo``: gateway + engine + a tiny random Llama on
CPU) in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorax.bench.cli import main

lorax_gateway = pytest.importorskip("lorax_gateway")
from lorax_gateway.backends.synthetic import SyntheticBackend, SyntheticConfig  # noqa: E402
from lorax_gateway.testing import free_port, serve  # noqa: E402

ADAPTERS = tuple(f"adapter-{i}" for i in range(4))


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    backend = SyntheticBackend(SyntheticConfig(adapters=ADAPTERS, token_delay_s=0.001))
    app = lorax_gateway.create_app(lorax_gateway.GatewaySettings(backend="synthetic"), backend)
    with serve(app, backend) as served:
        yield served.url


def _bench(url: str, out: Path, *args: str) -> dict[str, Any]:
    code = main(["--url", url, "--output", str(out), "--no-progress", *args])
    assert code == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("protocol", ["lorax", "openai", "openai-chat"])
def test_synthetic_gateway(gateway_url: str, tmp_path: Path, protocol: str) -> None:
    doc = _bench(
        gateway_url, tmp_path / "r.json",
        "--protocol", protocol, "--num-requests", "16", "--rate", "inf", "--max-concurrency", "8",
        "--num-adapters", "base,4", "--input-len", "uniform:4:40", "--output-len", "uniform:2:12",
        "--adapter-dist", "zipf",
    )  # fmt: skip
    assert doc["prompts"]["method"] == "tokenize"
    assert doc["server"]["info"]["model_id"] == "synthetic"
    for point in doc["points"]:
        s = point["summary"]
        assert s["requests"] == {"issued": 16, "completed": 16, "failed": 0}
        assert s["tokens"]["output_len_mismatch"] == 0  # ignore_eos_token honoured
        if protocol != "openai-chat":  # a chat template adds its own tokens
            # The synthetic engine counts words without BOS: one less than the fitted target.
            assert s["tokens"]["prompt_len_error_mean"] == pytest.approx(-1.0)


def test_unknown_adapters_are_generation_errors(gateway_url: str, tmp_path: Path) -> None:
    doc = _bench(
        gateway_url, tmp_path / "r.json",
        "--num-requests", "12", "--rate", "inf", "--num-adapters", "8",
        "--input-len", "fixed:4", "--output-len", "fixed:3", "--save-requests",
    )  # fmt: skip
    point = doc["points"][0]
    failed = [r for r in point["requests"] if r["adapter_id"] not in ADAPTERS]
    assert failed
    assert all(r["error_type"] == "generation" for r in failed)
    assert point["summary"]["errors"] == {"generation": len(failed)}


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("lorax_engine")
    tmp = tmp_path_factory.mktemp("launcher")
    port = free_port()
    log = tmp / "launcher.log"
    env = {**os.environ, "LORAX_ENGINE_CACHE": str(tmp / "cache")}
    command = [
        sys.executable, "-m", "lorax_gateway.launcher", "--model-id", "demo", "--device", "cpu",
        "--host", "127.0.0.1", "--port", str(port), "--max-total-tokens", "512",
        "--max-input-length", "256",
    ]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"lorax-launcher exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"lorax-launcher did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_embedded_default(launcher: str, tmp_path: Path) -> None:
    # The demo model's tokenizer is a 512-token BPE: words cost several tokens each, which the
    # /tokenize calibration measures, and prompts are cut to their length at token boundaries. Base model only: the launcher's engine has no adapter
    # manager wired in yet (adapter requests answer a generation error).
    plot = tmp_path / "demo.png"
    doc = _bench(
        launcher, tmp_path / "r.json",
        "--num-requests", "8", "--rate", "inf,0.5x", "--max-concurrency", "4",
        "--num-adapters", "base", "--input-len", "uniform:16:64", "--output-len", "uniform:4:16",
        "--plot", str(plot),
    )  # fmt: skip
    assert doc["prompts"]["method"] == "tokenize"
    assert doc["prompts"]["tokens_per_word"] > 1.0
    assert doc["prompts"]["special_tokens"] == 1
    assert doc["prompts"]["fit"] == "exact"
    for point in doc["points"]:
        s = point["summary"]
        assert s["requests"] == {"issued": 8, "completed": 8, "failed": 0}, s["error_examples"]
        assert s["tokens"]["output_len_mismatch"] == 0
        # Words cost several tokens each here; prompts cut at a token's end are still exact.
        assert s["tokens"]["prompt_len_mismatch"] == 0
        assert s["ttft_s"]["p50"] > 0
    assert plot.read_bytes().startswith(b"\x89PNG")
