"""``lorax-launcher --model-id demo``: the README's first command, gateway and engine in one process."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

import lorax

from .conftest import Process


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp: Path = tmp_path_factory.mktemp("launcher")
    proc = Process(
        [
            sys.executable,
            "-m",
            "lorax_gateway.launcher",
            "--model-id",
            "demo",
            "--device",
            "cpu",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--max-batch-total-tokens",
            "8192",
        ],
        tmp / "launcher.log",
    ).start()
    yield proc
    proc.stop()


def test_readme_flows(launcher: Process) -> None:
    r = httpx.post(
        f"{launcher.url}/generate",
        json={"inputs": "Hello", "parameters": {"max_new_tokens": 8}},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert 1 <= int(r.headers["x-generated-tokens"]) <= 8
    with lorax.Client(launcher.url) as client:
        out = client.generate("Hello", max_new_tokens=4)
    assert out.details is not None
    assert out.details.generated_tokens <= 4
    sdk = openai.OpenAI(base_url=f"{launcher.url}/v1", api_key="none", max_retries=0, timeout=60)
    chat = sdk.chat.completions.create(
        model="", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert chat.choices[0].message.role == "assistant"
    # The README's adapter example: the demo model ships demo/pirate and demo/shakespeare.
    r = httpx.post(
        f"{launcher.url}/generate",
        json={"inputs": "Hello", "parameters": {"max_new_tokens": 16, "adapter_id": "demo/pirate"}},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-adapter-id"] == "demo/pirate"
    models = [m.id for m in sdk.models.list()]
    assert models[0] == "demo"
    assert "demo/pirate" in models
    info = httpx.get(f"{launcher.url}/info").json()
    assert (info["model_id"], info["backend"]) == ("demo", "local")
    assert (info["dtype"], info["device"]) == ("float32", "cpu")
    assert 'engine="local"' in httpx.get(f"{launcher.url}/metrics").text


def _readme_blocks(language: str) -> list[str]:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    parts = readme.split(f"```{language}\n")[1:]
    return [part.split("```", 1)[0] for part in parts]


def test_readme_examples_run_as_printed(launcher: Process) -> None:
    # Every Python example of the README, verbatim but for the port, in a fresh interpreter.
    port = launcher.url.rsplit(":", 1)[1]
    blocks = _readme_blocks("python")
    assert len(blocks) >= 2
    for block in blocks:
        code = block.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip(), code
    # The curl example, run by bash when curl is there (it is on every machine we target).
    (curl,) = [b for b in _readme_blocks("bash") if b.lstrip().startswith("curl")]
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    done = subprocess.run(
        ["bash", "-c", curl.replace("localhost:8080", f"127.0.0.1:{port}")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"generated_text"' in done.stdout, done.stdout
