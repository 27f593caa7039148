"""Retries: what is retried (and what must never be), backoff and Retry-After."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from lorax import RetryConfig, errors
from lorax.retry import parse_retry_after

pytestmark = pytest.mark.anyio

OK = {"generated_text": "ok", "details": None}
FAST = RetryConfig(max_retries=3, initial_backoff=0.25, max_backoff=1.0, jitter=False)


def scripted(
    *outcomes: httpx.Response | type[httpx.TransportError],
) -> Callable[[httpx.Request], httpx.Response]:
    """A handler that plays `outcomes` in order: a response, or an exception class to raise."""
    queue: Iterator[httpx.Response | type[httpx.TransportError]] = iter(outcomes)

    def handler(request: httpx.Request) -> httpx.Response:
        outcome = next(queue)
        if isinstance(outcome, httpx.Response):
            return outcome
        raise outcome("simulated", request=request)

    return handler


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
async def test_generate_retries_when_the_request_was_never_sent(
    make_api: Any, sleeps: list[float], failure: type[httpx.TransportError]
) -> None:
    api = make_api(scripted(failure, failure, httpx.Response(200, json=OK)), retry=FAST)
    response = await api.call("generate", "hi")
    assert response.generated_text == "ok"
    assert len(api.requests) == 3
    assert sleeps == [0.25, 0.5]  # exponential backoff


@pytest.mark.parametrize("failure", [httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError])
async def test_generate_is_not_retried_once_the_server_may_have_started(
    make_api: Any, sleeps: list[float], failure: type[httpx.TransportError]
) -> None:
    api = make_api(scripted(failure, httpx.Response(200, json=OK)), retry=FAST)
    with pytest.raises(errors.APIConnectionError):
        await api.call("generate", "hi")
    assert len(api.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize("method", ["info", "models", "health", "tokenize"])
async def test_idempotent_calls_retry_any_transport_error(
    make_api: Any, sleeps: list[float], method: str
) -> None:
    answer = [] if method in ("models", "tokenize") else {"model_id": "m"}
    api = make_api(scripted(httpx.ReadError, httpx.Response(200, json=answer)), retry=FAST)
    await api.call(method, *(("x",) if method == "tokenize" else ()))
    assert len(api.requests) == 2
    assert sleeps == [0.25]


@pytest.mark.parametrize("status", [429, 503])
async def test_generate_retries_refusals_and_honours_retry_after(
    make_api: Any, sleeps: list[float], status: int
) -> None:
    refusal = httpx.Response(status, json={"error": "busy"}, headers={"Retry-After": "3"})
    api = make_api(scripted(refusal, httpx.Response(200, json=OK)), retry=FAST)
    assert (await api.call("generate", "hi")).generated_text == "ok"
    # The server's 3 s win over the 0.25 s backoff (and over max_backoff).
    assert sleeps == [3.0]


@pytest.mark.parametrize("status", [500, 502, 504, 424])
async def test_generate_does_not_retry_other_statuses(
    make_api: Any, sleeps: list[float], status: int
) -> None:
    api = make_api(scripted(httpx.Response(status, json={"error": "x"})), retry=FAST)
    with pytest.raises(errors.APIStatusError):
        await api.call("generate", "hi")
    assert len(api.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize("status", [502, 504])
async def test_idempotent_calls_retry_gateway_errors(
    make_api: Any, sleeps: list[float], status: int
) -> None:
    api = make_api(
        scripted(httpx.Response(status), httpx.Response(200, json={"model_id": "m"})), retry=FAST
    )
    assert (await api.call("info")).model_id == "m"
    assert len(api.requests) == 2


async def test_a_retry_after_longer_than_allowed_is_raised_at_once(
    make_api: Any, sleeps: list[float]
) -> None:
    refusal = httpx.Response(429, json={"error": "slow down"}, headers={"Retry-After": "120"})
    api = make_api(scripted(refusal), retry=FAST)
    with pytest.raises(errors.RateLimitExceededError) as info:
        await api.call("generate", "hi")
    assert info.value.retry_after == 120.0
    assert sleeps == []


async def test_gives_up_after_max_retries_with_the_last_error(
    make_api: Any, sleeps: list[float]
) -> None:
    busy = httpx.Response(503, json={"error": "down", "error_type": "healthcheck"})
    api = make_api(scripted(busy, busy, busy, busy), retry=FAST)
    with pytest.raises(errors.ShardNotReadyError):
        await api.call("generate", "hi")
    assert len(api.requests) == 4  # 1 + max_retries
    assert sleeps == [0.25, 0.5, 1.0]  # capped by max_backoff


async def test_retries_off(make_api: Any, sleeps: list[float]) -> None:
    api = make_api(scripted(httpx.ConnectError), max_session_retries=0)
    with pytest.raises(errors.APIConnectionError):
        await api.call("generate", "hi")
    assert len(api.requests) == 1


async def test_every_attempt_resends_the_same_request(make_api: Any) -> None:
    api = make_api(scripted(httpx.ConnectError, httpx.Response(200, json=OK)), retry=FAST)
    await api.call("generate", "hi", max_new_tokens=4)
    first, second = api.requests
    assert first.content == second.content
    assert first.headers == second.headers


def test_backoff_jitter_stays_within_half_to_full() -> None:
    config = RetryConfig(initial_backoff=1.0, max_backoff=100.0, jitter=True)
    for attempt in range(5):
        for _ in range(20):
            assert 0.5 * 2**attempt <= config.backoff(attempt) <= 2**attempt


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def parse(value: str) -> float | None:
        return parse_retry_after(httpx.Response(429, headers={"Retry-After": value}), now=now)

    assert parse("7") == 7.0
    assert parse("1.5") == 1.5
    assert parse("-3") == 0.0
    assert parse("Thu, 01 Jan 2026 12:00:30 GMT") == 30.0
    assert parse("Thu, 01 Jan 2026 11:00:00 GMT") == 0.0
    assert parse("soon") is None
    assert parse("inf") is None
    assert parse_retry_after(httpx.Response(429)) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"initial_backoff": -1.0},
        {"max_backoff": -0.1},
        {"max_retry_after": -5.0},
    ],
)
def test_retry_config_is_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        RetryConfig(**kwargs)
