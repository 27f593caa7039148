"""``lorax-launcher --model-id demo``: the README's first command, gateway and engine in one process."""

from __future__ import annotations

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
