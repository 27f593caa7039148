"""Overload: 10x ``--max-concurrent-requests`` at once against a gateway in front of a real engine.

The excess must be refused with 429 ``overloaded`` (and ``Retry-After``) at once, without
waiting on the engine; the admitted requests must complete; nothing may hang; and afterwards
the gateway admits again and the engine holds nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest

from .conftest import Process
from .stack import StreamOutcome, gateway_command, stream_generate, tally, wait_engine_idle

LIMIT = 4


@pytest.fixture(scope="module")
def small_gateway(engine: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("overload")
    proc = Process(
        gateway_command(engine.url, "--max-concurrent-requests", str(LIMIT)), tmp / "gateway.log"
    ).start()
    yield proc
    proc.stop()


async def _burst(url: str, n: int) -> list[StreamOutcome]:
    # Long enough (ignore_eos, 300 tokens) that the admitted requests hold their places
    # while the whole burst arrives.
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 300, "ignore_eos_token": True}}
    outcomes: list[StreamOutcome] = []
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one() -> None:
            outcomes.append(await stream_generate(client, url, body))

        with anyio.fail_after(240):  # "nothing hangs", with room for a loaded CI machine
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(one)
    return outcomes


def test_ten_times_the_limit(small_gateway: Process, engine: Process) -> None:
    outcomes = anyio.run(_burst, small_gateway.url, 10 * LIMIT)
    counts = tally(outcomes)
    print(f"\noverload: {len(outcomes)} requests: {counts}")
    assert len(outcomes) == 10 * LIMIT
    assert set(counts) <= {"complete", "overloaded"}, counts
    admitted = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 429]
    assert 1 <= len(admitted) <= LIMIT
    assert len(refused) == 10 * LIMIT - len(admitted)
    for out in admitted:
        assert out.complete
        assert len(out.tokens) == 300
    # Refused at admission, not after queueing: a loose bound that still excludes waiting
    # for a generation (each admitted request takes seconds).
    slowest_refusal = max(o.answered_at - o.sent_at for o in refused)
    assert slowest_refusal < 0.5, slowest_refusal
    gauges = wait_engine_idle(engine.url)
    assert gauges["lorax_engine_kv_blocks_used"] == 0, gauges
    # The places were all given back: LIMIT requests at once are admitted again.
    again = anyio.run(_burst, small_gateway.url, LIMIT)
    assert tally(again) == {"complete": LIMIT}


def test_refusal_has_the_error_shape(small_gateway: Process) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 200, "ignore_eos_token": True}}
    url = small_gateway.url
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=LIMIT + 1)) as client:
        held = [
            client.send(
                client.build_request("POST", f"{url}/generate_stream", json=body), stream=True
            )
            for _ in range(LIMIT)
        ]
        try:
            assert [resp.status_code for resp in held] == [200] * LIMIT
            r = client.post(f"{url}/generate", json={"inputs": "x"})
            assert r.status_code == 429
            assert r.json()["error_type"] == "overloaded"
            assert set(r.json()) == {"error", "error_type"}
            assert int(r.headers["retry-after"]) >= 1
        finally:
            for resp in held:
                resp.close()
