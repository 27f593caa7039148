"""The open-loop driver against the stub server: counts, lengths, timing, bounds and errors."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from lorax.bench.metrics import summarize
from lorax.bench.protocol import Endpoint
from lorax.bench.runner import PlannedRequest, Runner, RunOptions
from lorax.bench.stub import StubServer

pytestmark = pytest.mark.anyio


def _planned(
    n: int, *, gap: float = 0.0, adapters: list[str | None] | None = None, out: int = 4
) -> list[PlannedRequest]:
    names = adapters or ["adapter-0"]
    return [
        PlannedRequest(
            i, i * gap, "w " * (3 + i % 5), names[i % len(names)], 4 + i % 5, out + i % 3
        )
        for i in range(n)
    ]


async def _run(url: str, planned: list[PlannedRequest], **options: Any) -> list[Any]:
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=None)) as http:
        return await Runner(http, RunOptions(**options)).run(planned)


@pytest.mark.parametrize("protocol", ["lorax", "openai", "openai-chat"])
async def test_every_request_completes_with_its_exact_length(
    stub: StubServer, protocol: str
) -> None:
    planned = _planned(24, adapters=["a", "b", None])
    results = await _run(stub.url, planned, endpoint=Endpoint(protocol))  # type: ignore[arg-type]
    assert [r.index for r in results] == list(range(24))
    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.output_tokens for r in results] == [p.output_len for p in planned]
    assert [r.prompt_tokens for r in results] == [p.input_len for p in planned]  # words + BOS
    bodies = stub.generate_bodies()
    assert len(bodies) == 24
    if protocol == "lorax":
        assert sorted(b["parameters"]["max_new_tokens"] for b in bodies) == sorted(
            p.output_len for p in planned
        )
        assert all(b["parameters"]["ignore_eos_token"] for b in bodies)
        assert sorted(b["parameters"].get("adapter_id", "") for b in bodies) == sorted(
            p.adapter_id or "" for p in planned
        )
    else:
        assert sorted(b["max_tokens"] for b in bodies) == sorted(p.output_len for p in planned)
        assert all(("messages" in b) == (protocol == "openai-chat") for b in bodies)
        assert sorted(b["model"] for b in bodies) == sorted(p.adapter_id or "" for p in planned)


async def test_ttft_and_tpot_reflect_the_server_delays(stub: StubServer) -> None:
    stub.behaviour.ttft_s, stub.behaviour.token_delay_s = 0.15, 0.02
    results = await _run(stub.url, [PlannedRequest(0, 0.0, "a b", "a", 3, 6)])
    (r,) = results
    # Lower bounds are exact (sleeps never end early); upper ones leave room for a busy machine.
    assert 0.15 <= r.ttft_s < 1.0
    assert r.tpot_s is not None
    assert 0.02 <= r.tpot_s < 0.2
    assert r.e2e_s == pytest.approx(r.ttft_s + 5 * r.tpot_s)


async def test_requests_leave_at_their_scheduled_times(stub: StubServer) -> None:
    planned = _planned(6, gap=0.1)
    started = time.perf_counter()
    results = await _run(stub.url, planned)
    assert time.perf_counter() - started >= 0.5
    for r in results:
        assert r.sent_s >= r.scheduled_s
        assert r.sent_s == pytest.approx(r.scheduled_s, abs=0.2)


async def test_max_concurrency_caps_the_streams_in_flight(stub: StubServer) -> None:
    stub.behaviour.ttft_s = 0.1
    results = await _run(stub.url, _planned(9, out=2), max_concurrency=3)
    assert all(r.ok for r in results)
    assert stub.max_open_streams == 3
    # The third wave waited two waves for a slot; that wait is not part of its latency.
    waited = [r for r in results if r.client_wait_s >= 0.2]
    assert len(waited) >= 3
    assert all(r.e2e_s < r.client_wait_s for r in waited)


async def test_open_loop_does_not_wait_for_answers(stub: StubServer) -> None:
    stub.behaviour.ttft_s = 0.3
    results = await _run(stub.url, _planned(6, gap=0.02))
    assert stub.max_open_streams == 6
    assert all(r.ok for r in results)


async def test_duration_stops_sending(stub: StubServer) -> None:
    planned = _planned(50, gap=0.05)
    results = await _run(stub.url, planned, duration_s=0.22)
    assert 3 <= len(results) <= 5
    assert all(r.ok for r in results)
    assert len(stub.generate_bodies()) == len(results)


async def test_duration_also_drops_requests_still_waiting_for_a_slot(stub: StubServer) -> None:
    stub.behaviour.ttft_s = 0.1
    results = await _run(stub.url, _planned(20, out=2), max_concurrency=2, duration_s=0.25)
    # Two at a time, each about 0.1 s: a few waves are sent before 0.25 s, the rest never.
    assert 2 <= len(results) <= 8
    assert all(r.ok for r in results)
    assert len(stub.generate_bodies()) == len(results)


async def test_errors_are_counted_by_type(stub: StubServer) -> None:
    stub.behaviour.failures = {
        "bad": "generation",
        "busy": "overloaded",
        "cut": "cut",
        "crash": "event",
        "slow": "hang",
    }
    adapters: list[str | None] = ["ok", "bad", "busy", "cut", "crash", "slow", "ok", "bad"]
    results = await _run(stub.url, _planned(8, adapters=adapters, out=5), request_timeout_s=0.5)
    summary = summarize(results, slo_ttft_s=6.0)
    assert summary["requests"] == {"issued": 8, "completed": 2, "failed": 6}
    assert summary["errors"] == {
        "generation": 3,  # two 424s and one error event mid-stream
        "incomplete": 1,
        "overloaded": 1,
        "timeout": 1,
    }
    assert summary["error_examples"]["generation"] == "bad failed"
    crash = results[4]
    assert crash.error == "adapter crashed"
    assert crash.ttft_s is not None  # one token arrived before the error


async def test_unreachable_server_is_a_connection_error() -> None:
    results = await _run("http://127.0.0.1:9", _planned(2), request_timeout_s=5)
    assert [r.error_type for r in results] == ["connection", "connection"]


async def test_an_unexpected_client_failure_is_recorded_not_raised() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("boom")

    transport = httpx.MockTransport(broken)
    async with httpx.AsyncClient(base_url="http://stub", transport=transport) as http:
        results = await Runner(http, RunOptions()).run(_planned(2))
    assert [r.error_type for r in results] == ["client_error", "client_error"]
    assert results[0].error == "RuntimeError: boom"
