"""Our ``lorax`` client and the upstream ``lorax-client`` from PyPI against the gateway.

Upstream ``lorax-client`` has the same distribution *and* module name (``lorax``) as ours, so it
cannot be a dependency of the workspace. A session fixture installs the pinned upstream release
(with its own dependencies) into a temporary directory with ``uv pip install --target`` (served
from uv's cache after the first run) and runs a script in a subprocess with that directory first
on ``sys.path``; the script asserts it imported the upstream module, not ours.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lorax
from lorax_gateway.testing import Served

UPSTREAM = "lorax-client==0.6.3"


def test_our_client_generate_stream_and_errors(gateway: Served) -> None:
    with lorax.Client(gateway.url) as client:
        out = client.generate("one two", max_new_tokens=10, adapter_id="org/public")
        assert out.generated_text == "ONE TWO"
        assert out.details is not None
        assert out.details.finish_reason == "eos_token"
        assert out.details.generated_tokens == 3
        events = list(client.generate_stream("one two three", max_new_tokens=2))
        assert "".join(e.token.text for e in events) == "one two"
        assert events[-1].generated_text == "one two"
        with pytest.raises(lorax.errors.GenerationError):
            client.generate("x", adapter_id="missing/adapter")
        with pytest.raises(lorax.errors.UnprocessableEntityError):
            client.generate("x", max_new_tokens=100000)
        assert [t.text for t in client.tokenize("a b")] == ["<s>", "a", " b"]
        assert client.health() is True


@pytest.mark.anyio
async def test_our_async_client_stream(gateway: Served) -> None:
    async with lorax.AsyncClient(gateway.url) as client:
        texts = [
            e.token.text async for e in client.generate_stream("p q r", adapter_id="org/public")
        ]
    assert texts[:3] == ["P", " Q", " R"]


@pytest.fixture(scope="session")
def upstream_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is needed to install the upstream lorax-client for this test"
    target = tmp_path_factory.mktemp("upstream-lorax-client")
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            sys.executable,
            "--target",
            str(target),
            UPSTREAM,
        ],
        check=True,
        timeout=300,
    )
    return target


UPSTREAM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import lorax
    assert lorax.__file__.startswith(sys.argv[1]), lorax.__file__
    from lorax.errors import GenerationError, ValidationError
    client = lorax.Client(sys.argv[2])
    out = {}
    r = client.generate("one two", max_new_tokens=10, details=True)
    out["text"] = r.generated_text
    out["finish"] = r.details.finish_reason
    out["tokens"] = r.details.generated_tokens
    out["adapter"] = client.generate("one two", adapter_id="org/public").generated_text
    stream = list(client.generate_stream("a b c", max_new_tokens=2))
    out["stream_text"] = "".join(s.token.text for s in stream)
    out["stream_final"] = stream[-1].generated_text
    out["stream_finish"] = stream[-1].details.finish_reason
    eos_stream = list(client.generate_stream("x y"))
    out["eos_events"] = len(eos_stream)
    out["eos_final"] = eos_stream[-1].generated_text
    try:
        client.generate("x", adapter_id="missing/adapter")
    except GenerationError as e:
        out["generation_error"] = str(e)
    try:
        client.generate("x", max_new_tokens=100000)
    except ValidationError as e:
        out["validation_error"] = str(e)
    print(json.dumps(out))
    """
)


def test_upstream_lorax_client(gateway: Served, upstream_client: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", UPSTREAM_SCRIPT, str(upstream_client), gateway.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["text"] == "one two"
    assert out["finish"] == "eos_token"
    assert out["tokens"] == 3
    assert out["adapter"] == "ONE TWO"
    assert out["stream_text"] == "a b"
    assert out["stream_final"] == "a b"
    assert out["stream_finish"] == "length"
    assert out["eos_events"] == 3  # "x", " y", then EOS carrying the full text
    assert out["eos_final"] == "x y"
    assert out["generation_error"] == "adapter missing/adapter could not be loaded"
    assert "max_new_tokens" in out["validation_error"]
