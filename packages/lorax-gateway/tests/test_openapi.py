"""The OpenAPI document describes what the gateway answers: error shape, SSE, closed models."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from lorax_gateway.testing import Served

STREAMING = ("/", "/v1/completions", "/v1/chat/completions")


@pytest.fixture(scope="module")
def document(gateway: Served) -> dict[str, Any]:
    r = httpx.get(f"{gateway.url}/openapi.json")
    assert r.status_code == 200
    return r.json()


def _operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(path, op) for path, item in document["paths"].items() for op in item.values()]


def test_every_error_answer_is_the_error_body(document: dict[str, Any]) -> None:
    error = document["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error", "error_type"]
    assert error["additionalProperties"] is False
    for path, op in _operations(document):
        statuses = set(op["responses"])
        # The gateway answers bad input with 422, never Litestar's 400 {status_code, detail}.
        assert "400" not in statuses, path
        for status, response in op["responses"].items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)


def test_generation_routes_list_their_errors(document: dict[str, Any]) -> None:
    for path in ("/generate", "/generate_stream", *STREAMING):
        statuses = set(document["paths"][path]["post"]["responses"])
        assert {"401", "403", "404", "413", "422", "424", "429", "503"} <= statuses, path
    assert "503" in document["paths"]["/health"]["get"]["responses"]


def test_streams_are_documented_as_event_streams(document: dict[str, Any]) -> None:
    only_sse = document["paths"]["/generate_stream"]["post"]["responses"]["200"]["content"]
    assert set(only_sse) == {"text/event-stream"}
    for path in STREAMING:
        content = document["paths"][path]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}, path


def test_schemas_promise_no_more_than_validation(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name in ("ResponseFormat", "OpenAIResponseFormat", "MergedAdapters"):
        assert schemas[name]["additionalProperties"] is False, name
    params = schemas["Parameters"]["properties"]
    # Bounds of 0 on optional fields, which Litestar alone leaves out.
    assert params["max_new_tokens"]["exclusiveMinimum"] == 0
    assert params["seed"]["minimum"] == 0
    assert params["top_p"]["exclusiveMinimum"] == 0
    assert params["return_k_alternatives"]["maximum"] == 100


def test_stream_content_type_matches_the_document(gateway: Served) -> None:
    body = {"inputs": "a b", "parameters": {"max_new_tokens": 2}, "stream": True}
    r = httpx.post(f"{gateway.url}/", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")


def test_return_k_alternatives_is_bounded(gateway: Served) -> None:
    body = {"inputs": "a b", "parameters": {"max_new_tokens": 1, "return_k_alternatives": 101}}
    r = httpx.post(f"{gateway.url}/generate", json=body)
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation"
    body["parameters"]["return_k_alternatives"] = 100
    assert httpx.post(f"{gateway.url}/generate", json=body).status_code == 200
