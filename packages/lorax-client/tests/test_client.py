"""Every client method against a fake server, with Client and AsyncClient alike."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

import lorax
from lorax import AsyncClient, Client, FinishReason, MergedAdapters, ResponseFormat, RetryConfig

pytestmark = pytest.mark.anyio

GENERATED = {
    "generated_text": " Rayleigh scattering",
    "details": {
        "finish_reason": "eos_token",
        "prompt_tokens": 5,
        "generated_tokens": 2,
        "seed": None,
        "prefill": [{"id": 1, "text": "<s>", "logprob": None}],
        "tokens": [
            {"id": 10, "text": " Rayleigh", "logprob": -0.1, "special": False},
            {"id": 11, "text": " scattering", "logprob": -0.2, "special": False},
        ],
    },
}


def body_of(request: httpx.Request) -> dict[str, Any]:
    return json.loads(request.content)


async def test_generate_sends_lorax_request_and_parses_response(make_api: Any) -> None:
    api = make_api(lambda r: httpx.Response(200, json=GENERATED))
    response = await api.call("generate", "Why is the sky blue?", adapter_id="some/adapter")

    assert response.generated_text == " Rayleigh scattering"
    assert response.details is not None
    assert response.details.finish_reason is FinishReason.EndOfSequenceToken
    assert [t.text for t in response.details.tokens] == [" Rayleigh", " scattering"]
    assert response.details.prefill[0].logprob is None
    (request,) = api.requests
    assert request.method == "POST"
    assert str(request.url) == "http://lorax.test:8080/generate"
    assert request.headers["content-type"] == "application/json"
    body = body_of(request)
    assert body["inputs"] == "Why is the sky blue?"
    # Upstream's defaults: details on, no stop sequences; unset options are left out entirely.
    assert body["parameters"]["adapter_id"] == "some/adapter"
    assert body["parameters"]["details"] is True
    assert body["parameters"]["stop"] == []
    assert "temperature" not in body["parameters"]
    assert "watermark" not in body["parameters"]
    assert "stream" not in body


async def test_generate_sends_every_parameter_by_its_wire_name(make_api: Any) -> None:
    api = make_api(lambda r: httpx.Response(200, json=GENERATED))
    await api.call(
        "generate",
        "hi",
        adapter_source="local",
        merged_adapters=MergedAdapters(
            ids=["a", "b"], weights=[0.7, 0.3], merge_strategy="ties", density=0.5
        ),
        api_token="hf_secret",
        do_sample=True,
        max_new_tokens=7,
        ignore_eos_token=True,
        repetition_penalty=1.1,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        return_full_text=True,
        stop_sequences=["\n\n"],
        temperature=0.8,
        top_k=40,
        top_p=0.9,
        truncate=100,
        typical_p=0.95,
        best_of=2,
        watermark=True,
        response_format=ResponseFormat(type="json_object", schema={"type": "object"}),
        details=False,
        decoder_input_details=True,
        return_k_alternatives=3,
    )
    params = body_of(api.requests[0])["parameters"]
    assert params == {
        "adapter_source": "local",
        "merged_adapters": {
            "ids": ["a", "b"],
            "weights": [0.7, 0.3],
            "merge_strategy": "ties",
            "density": 0.5,
        },
        "api_token": "hf_secret",
        "do_sample": True,
        "max_new_tokens": 7,
        "ignore_eos_token": True,
        "repetition_penalty": 1.1,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "return_full_text": True,
        "stop": ["\n\n"],
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.9,
        "truncate": 100,
        "typical_p": 0.95,
        "best_of": 2,
        "watermark": True,
        "details": False,
        "decoder_input_details": True,
        "return_k_alternatives": 3,
        "response_format": {"type": "json_object", "schema": {"type": "object"}},
    }


async def test_generate_accepts_dicts_and_the_openai_json_schema_spelling(make_api: Any) -> None:
    api = make_api(lambda r: httpx.Response(200, json=GENERATED))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    await api.call(
        "generate",
        "hi",
        merged_adapters={"ids": ["x"], "weights": [1.0]},
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    params = body_of(api.requests[0])["parameters"]
    assert params["merged_adapters"] == {"ids": ["x"], "weights": [1.0], "density": 1.0}
    assert params["response_format"] == {"type": "json_schema", "schema": schema}


async def test_generate_takes_the_first_item_of_a_list_response(make_api: Any) -> None:
    api = make_api(lambda r: httpx.Response(200, json=[GENERATED]))
    response = await api.call("generate", "hi")
    assert response.generated_text == " Rayleigh scattering"


async def test_headers_cookies_and_api_key(make_api: Any) -> None:
    api = make_api(
        lambda r: httpx.Response(200, json=GENERATED),
        headers={"X-Team": "blue", "authorization": "Bearer old", "user-agent": "mine/1"},
        cookies={"session": "abc"},
        api_key="sk-123",
    )
    await api.call("generate", "hi")
    request = api.requests[0]
    assert request.headers["authorization"] == "Bearer sk-123"
    assert request.headers["x-team"] == "blue"
    assert request.headers["cookie"] == "session=abc"
    # Case-insensitive: the caller's user-agent replaces ours instead of being sent twice.
    assert request.headers.get_list("user-agent") == ["mine/1"]
    assert request.headers.get_list("authorization") == ["Bearer sk-123"]
    assert api.client.headers["x-team"] == "blue"
    default = make_api(lambda r: httpx.Response(200, json=GENERATED))
    await default.call("generate", "hi")
    assert default.requests[0].headers["user-agent"] == f"lorax-client-python/{lorax.__version__}"


async def test_base_url_with_a_path_prefix_and_trailing_slash(mode: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"model_id": "m"})

    url = "https://example.test/v1/llms/mistral/"
    if mode == "sync":
        Client(url, session=httpx.Client(transport=httpx.MockTransport(handler))).info()
    else:
        client = AsyncClient(url, session=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
        await client.info()
    assert seen == ["https://example.test/v1/llms/mistral/info"]


async def test_timeouts_default_per_client_and_override_per_call(make_api: Any) -> None:
    api = make_api(lambda r: httpx.Response(200, json=GENERATED), timeout=12)
    await api.call("generate", "hi")
    await api.call("generate", "hi", timeout=3.5)
    await api.call("generate", "hi", timeout=None)
    await api.call("generate", "hi", timeout=httpx.Timeout(1.0, read=9.0))
    timeouts = [r.extensions["timeout"] for r in api.requests]
    assert timeouts[0] == {"connect": 12, "read": 12, "write": 12, "pool": 12}
    assert timeouts[1] == {"connect": 3.5, "read": 3.5, "write": 3.5, "pool": 3.5}
    assert timeouts[2] == {"connect": None, "read": None, "write": None, "pool": None}
    assert timeouts[3] == {"connect": 1.0, "read": 9.0, "write": 1.0, "pool": 1.0}


async def test_tokenize(make_api: Any) -> None:
    tokens = [
        {"id": 1, "text": "<s>", "start": 0, "stop": 0},
        {"id": 9, "text": "hi", "start": 0, "stop": 2},
    ]
    api = make_api(lambda r: httpx.Response(200, json=tokens))
    result = await api.call("tokenize", "hi", add_special_tokens=False)
    assert [(t.id, t.text, t.start, t.stop) for t in result] == [(1, "<s>", 0, 0), (9, "hi", 0, 2)]
    request = api.requests[0]
    assert request.url.path == "/tokenize"
    assert body_of(request) == {"inputs": "hi", "add_special_tokens": False}


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
async def test_health(make_api: Any, status: int, healthy: bool) -> None:
    body = {} if status == 200 else {"error": "engine down", "error_type": "healthcheck"}
    api = make_api(lambda r: httpx.Response(status, json=body))
    assert await api.call("health") is healthy
    # A 503 is health's answer, not a reason to retry.
    assert len(api.requests) == 1
    assert api.requests[0].method == "GET"
    assert api.requests[0].url.path == "/health"


async def test_health_raises_for_other_errors(make_api: Any) -> None:
    api = make_api(lambda r: httpx.Response(500, json={"error": "boom"}))
    with pytest.raises(lorax.errors.UnknownError):
        await api.call("health")


async def test_info_reads_ours_and_upstream_spellings(make_api: Any) -> None:
    upstream = {
        "model_id": "mistralai/Mistral-7B",
        "model_dtype": "torch.float16",
        "model_device_type": "cuda",
        "max_input_length": 4095,
        "max_total_tokens": 4096,
        "max_concurrent_requests": 128,
        "max_best_of": 2,
        "max_stop_sequences": 4,
        "version": "0.10.0",
        "sha": "abc",
    }
    api = make_api(lambda r: httpx.Response(200, json=upstream))
    info = await api.call("info")
    assert (info.model_id, info.dtype, info.device) == (
        "mistralai/Mistral-7B",
        "torch.float16",
        "cuda",
    )
    assert info.max_total_tokens == 4096
    assert info.max_stop_sequences == 4
    assert info.model_extra == {"sha": "abc"}
    assert api.requests[0].url.path == "/info"

    ours = make_api(
        lambda r: httpx.Response(200, json={"model_id": "m", "dtype": "bf16", "device": "cuda"})
    )
    info = await ours.call("info")
    assert (info.dtype, info.device, info.max_best_of) == ("bf16", "cuda", None)


async def test_models(make_api: Any) -> None:
    listing = {
        "object": "list",
        "data": [
            {"id": "base/model", "object": "model", "created": 1700000000, "owned_by": "lorax"},
            {
                "id": "org/adapter",
                "object": "model",
                "created": 1700000001,
                "owned_by": "tenant-a",
                "parent": "base/model",
            },
        ],
    }
    api = make_api(lambda r: httpx.Response(200, json=listing))
    models = await api.call("models")
    assert [m.id for m in models] == ["base/model", "org/adapter"]
    assert models[1].owned_by == "tenant-a"
    assert models[1].model_extra == {"parent": "base/model"}
    assert api.requests[0].method == "GET"
    assert api.requests[0].url.path == "/v1/models"


async def test_malformed_success_body_is_a_response_validation_error(make_api: Any) -> None:
    api = make_api(lambda r: httpx.Response(200, json={"text": "not lorax"}))
    with pytest.raises(lorax.APIResponseValidationError) as info:
        await api.call("generate", "hi")
    assert info.value.status_code == 200
    assert info.value.body == {"text": "not lorax"}

    api = make_api(lambda r: httpx.Response(200, content=b"<html>proxy</html>"))
    with pytest.raises(lorax.APIResponseValidationError) as info:
        await api.call("models")
    assert info.value.body == "<html>proxy</html>"


def test_sync_client_closes_only_the_pool_it_made() -> None:
    given = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, json={})))
    with Client("http://a.test", session=given) as client:
        assert client.health()
    assert not given.is_closed
    with Client("http://a.test") as own:
        pool = own._http  # pyright: ignore[reportPrivateUsage]
    assert pool.is_closed


async def test_async_client_closes_only_the_pool_it_made() -> None:
    given = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, json={})))
    async with AsyncClient("http://a.test", session=given) as client:
        assert await client.health()
    assert not given.is_closed
    async with AsyncClient("http://a.test") as own:
        pool = own._http  # pyright: ignore[reportPrivateUsage]
    assert pool.is_closed


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="base_url"):
        Client("localhost:8080")
    with pytest.raises(ValueError, match="timeout"):
        Client("http://a.test", timeout=0)
    client = Client("http://a.test", max_session_retries=5)
    assert client.retry.max_retries == 5
    client = Client("http://a.test", max_session_retries=5, retry=RetryConfig(max_retries=1))
    assert client.retry.max_retries == 1
    assert client.base_url == "http://a.test"


def test_version_matches_pyproject() -> None:
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    assert lorax.__version__ == tomllib.loads(pyproject.read_text())["project"]["version"]
