"""Load: many concurrent streams over 20 adapters, mixed lengths, some constrained.

Every request must end with its whole output or an explicit error (nothing lost, nothing hung),
``details`` must count exactly the streamed tokens, and afterwards the engine must hold no request
and no KV block. CI runs 100 streams; ``--runslow`` runs the issue's 500.

The adapters are the demo's two plus 18 ids backed by copies of them under
``--local-adapter-root``, with 4 GPU slots, so adapters are loaded and evicted while streaming.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from .conftest import Process
from .stack import (
    StreamOutcome,
    adapter_root,
    engine_command,
    gateway_command,
    stream_generate,
    tally,
    wait_engine_idle,
)

_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["name", "n"],
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, Process, list[str]]]:
    tmp = tmp_path_factory.mktemp("load")
    ids = adapter_root(tmp / "cache", tmp / "adapters", copies=18)
    engine = Process(
        engine_command(
            tmp / "cache",
            "--local-adapter-root",
            str(tmp / "adapters"),
            "--max-active-adapters",
            "4",
            "--max-batch-total-tokens",
            "16384",
            "--max-concurrent-requests",
            "1000",
        ),
        tmp / "engine.log",
    ).start()
    gateway = Process(
        gateway_command(engine.url, "--max-concurrent-requests", "1000"), tmp / "gateway.log"
    ).start()
    yield engine, gateway, ids
    gateway.stop()
    engine.stop()


def _bodies(n: int, adapter_ids: list[str]) -> list[dict[str, Any]]:
    rng = random.Random(n)
    bodies: list[dict[str, Any]] = []
    for i in range(n):
        params: dict[str, Any] = {
            "max_new_tokens": rng.choice([1, 4, 16, 48]),
            "details": True,
            # Every 7th request runs on the base model, the others over all the adapters.
            "adapter_id": None if i % 7 == 0 else adapter_ids[i % len(adapter_ids)],
        }
        if i % 5 == 0:
            params["response_format"] = {"type": "json_schema", "schema": _SCHEMA}
        else:
            params["ignore_eos_token"] = i % 2 == 0
        bodies.append({"inputs": "Hello " * rng.randint(1, 40), "parameters": params})
    return bodies


async def _run(url: str, bodies: list[dict[str, Any]]) -> list[StreamOutcome]:
    outcomes: list[StreamOutcome | None] = [None] * len(bodies)
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one(i: int) -> None:
            outcomes[i] = await stream_generate(client, url, bodies[i])

        async with anyio.create_task_group() as tg:
            for i in range(len(bodies)):
                tg.start_soon(one, i)
    return [o for o in outcomes if o is not None]


def _check(
    engine: Process, bodies: list[dict[str, Any]], outcomes: list[StreamOutcome]
) -> dict[str, int]:
    assert len(outcomes) == len(bodies)  # every request came back
    for body, out in zip(bodies, outcomes, strict=True):
        params = body["parameters"]
        assert out.complete or out.error_type not in (None, "transport"), out
        if not out.complete:
            continue
        assert out.final is not None
        details = out.final["details"]
        # details count exactly the tokens that were streamed, within the asked length.
        assert details["generated_tokens"] == len(out.tokens)
        assert 1 <= len(out.tokens) <= params["max_new_tokens"]
        if params.get("ignore_eos_token"):
            assert details["finish_reason"] == "length"
            assert len(out.tokens) == params["max_new_tokens"]
        if "response_format" in params and details["finish_reason"] == "eos_token":
            document = json.loads(out.final["generated_text"])
            assert set(document) >= {"name", "n"}
    gauges = wait_engine_idle(engine.url)
    assert gauges["lorax_engine_kv_blocks_used"] == 0, gauges
    assert gauges["lorax_engine_in_flight_requests"] == 0, gauges
    # No request still pins an adapter slot, and no load or promotion is left running.
    assert gauges["lorax_engine_adapter_refs"] == 0, gauges
    assert gauges["lorax_engine_adapters_loading"] == 0, gauges
    counts = tally(outcomes)
    print(f"\nload: {len(outcomes)} streams: {counts}; engine after: {gauges}")
    return counts


def _load(stack: tuple[Process, Process, list[str]], n: int) -> None:
    engine, gateway, ids = stack
    assert len(ids) == 20
    bodies = _bodies(n, ids)
    outcomes = anyio.run(_run, gateway.url, bodies)
    counts = _check(engine, bodies, outcomes)
    # On an unconstrained pool with admission at 1000, nothing is refused or fails.
    assert counts == {"complete": n}


def test_load_100_streams(stack: tuple[Process, Process, list[str]]) -> None:
    _load(stack, 100)


@pytest.mark.slow
def test_load_500_streams(stack: tuple[Process, Process, list[str]]) -> None:
    _load(stack, 500)
