"""`generate_stream` end to end: events, split chunks, keep-alives, errors mid-stream."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from lorax import FinishReason, RetryConfig, errors

pytestmark = pytest.mark.anyio


async def test_stream_yields_every_token_and_the_final_details(make_api: Any, wire: Any) -> None:
    api = make_api(lambda r: httpx.Response(200, content=wire.stream_body([" Ray", "leigh", "!"])))
    events = await api.stream("Why?", adapter_id="a/b", max_new_tokens=3)

    assert [e.token.text for e in events] == [" Ray", "leigh", "!"]
    assert [e.generated_text for e in events] == [None, None, " Rayleigh!"]
    final = events[-1].details
    assert final is not None
    assert final.finish_reason is FinishReason.Length
    assert final.generated_tokens == 3
    request = api.requests[0]
    assert request.url.path == "/generate_stream"
    assert request.headers["accept"] == "text/event-stream"
    body = json.loads(request.content)
    assert body["parameters"]["adapter_id"] == "a/b"
    assert body["parameters"]["max_new_tokens"] == 3


async def test_stream_survives_byte_splits_and_keepalives(make_api: Any, wire: Any) -> None:
    # CRLF after the first event, keep-alive comments before and between events.
    first, rest = wire.stream_body(["héllo", " wörld"]).split(b"\n\n", 1)
    body = b": keep-alive\n\n" + first + b"\r\n: ping\r\n\r\n" + rest
    # One byte per network read: every split point, including inside UTF-8 characters.
    pieces = [body[i : i + 1] for i in range(len(body))]
    api = make_api(lambda r: httpx.Response(200, stream=wire.chunks(pieces)))
    events = await api.stream("hi")
    assert [e.token.text for e in events] == ["héllo", " wörld"]
    assert events[-1].generated_text == "héllo wörld"


async def test_error_event_mid_stream_raises_the_mapped_error(make_api: Any, wire: Any) -> None:
    first = {"token": wire.token(0, "a"), "generated_text": None, "details": None}
    error = {"error": "CUDA out of memory", "error_type": "generation"}
    api = make_api(
        lambda r: httpx.Response(
            200, content=wire.sse(first, error), headers={"x-request-id": "req-7"}
        )
    )
    items, raised = await api.stream_until_error("hi")
    assert [e.token.text for e in items] == ["a"]
    assert isinstance(raised, errors.GenerationError)
    assert raised.status_code == 200
    assert raised.error_type == "generation"
    assert raised.message == "CUDA out of memory"
    assert raised.request_id == "req-7"
    assert raised.body == error


async def test_stream_cut_before_final_event_is_incomplete(make_api: Any, wire: Any) -> None:
    first = {"token": wire.token(0, "a"), "generated_text": None, "details": None}
    api = make_api(lambda r: httpx.Response(200, content=wire.sse(first)))
    items, raised = await api.stream_until_error("hi")
    assert len(items) == 1
    assert isinstance(raised, errors.IncompleteGenerationError)


async def test_connection_lost_mid_stream_is_not_retried(make_api: Any, wire: Any) -> None:
    body = wire.stream_body(["a", "b", "c"])
    cut = httpx.ReadError("connection reset by peer")
    api = make_api(
        lambda r: httpx.Response(200, stream=wire.chunks([body[:120], cut])),
        retry=RetryConfig(max_retries=5, initial_backoff=0),
    )
    items, raised = await api.stream_until_error("hi")
    assert [e.token.text for e in items] == ["a"]
    assert isinstance(raised, errors.APIConnectionError)
    assert isinstance(raised.__cause__, httpx.ReadError)
    assert len(api.requests) == 1


async def test_error_status_before_the_stream(make_api: Any) -> None:
    api = make_api(
        lambda r: httpx.Response(422, json={"error": "too long", "error_type": "validation"})
    )
    items, raised = await api.stream_until_error("hi")
    assert items == []
    assert isinstance(raised, errors.UnprocessableEntityError)
    assert raised.body == {"error": "too long", "error_type": "validation"}


async def test_stream_retries_a_503_before_it_starts(make_api: Any, wire: Any) -> None:
    replies = iter(
        [
            httpx.Response(503, json={"error": "warming up"}),
            httpx.Response(200, content=wire.stream_body(["ok"])),
        ]
    )
    api = make_api(lambda r: next(replies), retry=RetryConfig(initial_backoff=0))
    events = await api.stream("hi")
    assert [e.token.text for e in events] == ["ok"]
    assert len(api.requests) == 2


@pytest.mark.parametrize(
    ("bad", "kind"),
    [("not json at all", "not JSON"), (json.dumps({"token": {"id": "x"}}), "unexpected shape")],
)
async def test_garbage_event_is_a_response_validation_error(
    make_api: Any, wire: Any, bad: str, kind: str
) -> None:
    api = make_api(lambda r: httpx.Response(200, content=wire.sse(bad)))
    _, raised = await api.stream_until_error("hi")
    assert isinstance(raised, errors.APIResponseValidationError)
    assert kind in raised.message


async def test_done_sentinel_and_extra_fields_are_tolerated(make_api: Any, wire: Any) -> None:
    body = wire.stream_body(["x"]).replace(
        b'"special": false', b'"special": false, "skipped": false'
    )
    api = make_api(lambda r: httpx.Response(200, content=body + wire.sse("[DONE]")))
    events = await api.stream("hi")
    assert len(events) == 1
    assert events[0].token.model_extra == {"skipped": False}


def test_leaving_the_loop_early_closes_the_response(wire: Any) -> None:
    from lorax import Client

    closed: list[bool] = []

    class Tracking(wire.chunks):  # type: ignore[misc, name-defined]
        def close(self) -> None:
            closed.append(True)

    body = wire.stream_body(["a", "b", "c"])
    transport = httpx.MockTransport(lambda r: httpx.Response(200, stream=Tracking([body])))
    client = Client("http://a.test", session=httpx.Client(transport=transport))
    stream = client.generate_stream("hi")
    assert next(stream).token.text == "a"
    stream.close()  # what `break` out of a for loop does to a generator
    assert closed == [True]


async def test_error_body_lost_before_the_stream(make_api: Any, wire: Any) -> None:
    # The 503's body never arrives: the request may have reached the engine, so no retry.
    api = make_api(
        lambda r: httpx.Response(503, stream=wire.chunks([httpx.ReadError("reset")])),
        retry=RetryConfig(max_retries=3, initial_backoff=0),
    )
    _, raised = await api.stream_until_error("hi")
    assert isinstance(raised, errors.APIConnectionError)
    assert len(api.requests) == 1


async def test_async_stream_closed_early_closes_the_response(wire: Any) -> None:
    from contextlib import aclosing

    from lorax import AsyncClient

    closed: list[bool] = []

    class Tracking(wire.chunks):  # type: ignore[misc, name-defined]
        async def aclose(self) -> None:
            closed.append(True)

    body = wire.stream_body(["a", "b", "c"])
    transport = httpx.MockTransport(lambda r: httpx.Response(200, stream=Tracking([body])))
    client = AsyncClient("http://a.test", session=httpx.AsyncClient(transport=transport))
    async with aclosing(client.generate_stream("hi")) as events:
        async for event in events:
            assert event.token.text == "a"
            break
    assert closed == [True]
