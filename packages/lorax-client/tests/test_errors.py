"""Every error path: HTTP statuses and bodies to the error tree, and what the errors carry."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from lorax import RetryConfig, errors

pytestmark = pytest.mark.anyio

NO_RETRY = RetryConfig(max_retries=0)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, {"error": "bad json", "error_type": "bad_request"}, errors.BadRequestError),
        (401, {"error": "missing key", "error_type": "authentication"}, errors.AuthenticationError),
        (403, {"error": "no", "error_type": "permission"}, errors.PermissionDeniedError),
        (404, {"error": "adapter not found"}, errors.NotFoundError),
        (
            422,
            {"error": "top_k must be > 0", "error_type": "validation"},
            errors.UnprocessableEntityError,
        ),
        (424, {"error": "adapter load failed", "error_type": "generation"}, errors.GenerationError),
        (429, {"error": "queue full", "error_type": "overloaded"}, errors.OverloadedError),
        (429, {"error": "tenant limit"}, errors.RateLimitExceededError),
        (500, {"error": "boom"}, errors.UnknownError),
        (503, {"error": "engine down", "error_type": "healthcheck"}, errors.ShardNotReadyError),
        (504, {"error": "engine timeout"}, errors.ShardTimeoutError),
        # error_type wins over the status.
        (400, {"error": "cuda oom", "error_type": "generation"}, errors.GenerationError),
        (
            500,
            {"error": "cut", "error_type": "incomplete_generation"},
            errors.IncompleteGenerationError,
        ),
        (400, {"error": "nope", "error_type": "validation"}, errors.UnprocessableEntityError),
        # An unknown error_type falls back to the status.
        (404, {"error": "gone", "error_type": "brand_new_type"}, errors.NotFoundError),
    ],
)
async def test_status_errors_map_to_the_tree(
    make_api: Any, status: int, body: dict[str, str], expected: type[errors.APIStatusError]
) -> None:
    api = make_api(
        lambda r: httpx.Response(status, json=body, headers={"x-request-id": "req-42"}),
        retry=NO_RETRY,
    )
    with pytest.raises(expected) as info:
        await api.call("generate", "hi")
    error = info.value
    assert type(error) is expected
    assert isinstance(error, errors.APIStatusError)
    assert isinstance(error, errors.APIError)
    assert isinstance(error, errors.LoraxError)
    assert error.status_code == status
    assert error.body == body
    assert error.message == body["error"]
    assert error.error_type == body.get("error_type")
    assert error.request_id == "req-42"
    assert error.request is api.requests[0]
    assert error.response.status_code == status
    assert "req-42" in str(error)
    assert f"HTTP {status}" in str(error)


async def test_server_validation_is_also_a_validation_error(make_api: Any) -> None:
    api = make_api(lambda r: httpx.Response(422, json={"error": "x", "error_type": "validation"}))
    with pytest.raises(errors.ValidationError):
        await api.call("generate", "hi")


async def test_non_json_error_bodies_keep_their_text(make_api: Any) -> None:
    api = make_api(lambda r: httpx.Response(502, text="Bad Gateway from nginx"), retry=NO_RETRY)
    with pytest.raises(errors.UnknownError) as info:
        await api.call("generate", "hi")
    assert info.value.body == "Bad Gateway from nginx"
    assert info.value.message == "Bad Gateway from nginx"
    assert info.value.request_id is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "Internal Server Error"),
        ({"message": "openai style"}, "openai style"),
        ({"detail": [{"loc": "x"}]}, "[{'loc': 'x'}]"),
    ],
)
async def test_other_error_body_shapes(make_api: Any, body: Any, message: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500) if body is None else httpx.Response(500, json=body)

    api = make_api(handler, retry=NO_RETRY)
    with pytest.raises(errors.UnknownError) as info:
        await api.call("info")
    assert info.value.message == message


@pytest.mark.parametrize("method", ["tokenize", "health", "info", "models"])
async def test_every_method_maps_errors(make_api: Any, method: str) -> None:
    api = make_api(lambda r: httpx.Response(401, json={"error": "who are you"}))
    args = ("text",) if method == "tokenize" else ()
    with pytest.raises(errors.AuthenticationError):
        await api.call(method, *args)


async def test_connection_refused(make_api: Any) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    api = make_api(refuse, retry=NO_RETRY)
    with pytest.raises(errors.APIConnectionError) as info:
        await api.call("generate", "hi")
    assert not isinstance(info.value, errors.APITimeoutError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert info.value.request is api.requests[0]


@pytest.mark.parametrize("exc", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.WriteTimeout])
async def test_timeouts(make_api: Any, exc: type[httpx.TimeoutException]) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise exc("timed out", request=request)

    api = make_api(slow, retry=NO_RETRY)
    with pytest.raises(errors.APITimeoutError) as info:
        await api.call("tokenize", "hi", timeout=0.5)
    assert isinstance(info.value, errors.APIConnectionError)
    assert api.requests[0].extensions["timeout"]["read"] == 0.5
