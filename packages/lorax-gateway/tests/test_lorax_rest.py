"""LoRAX REST routes over real HTTP: /generate, /generate_stream, POST /, errors and headers."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from lorax_gateway.testing import Served


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def test_generate_details_and_headers(gateway: Served) -> None:
    r = httpx.post(
        f"{gateway.url}/generate",
        json={
            "inputs": "one two three",
            "parameters": {"details": True, "decoder_input_details": True},
        },
        headers={"x-request-id": "abc-123"},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["generated_text"] == "one two three"
    details = body["details"]
    assert details["finish_reason"] == "eos_token"
    assert details["prompt_tokens"] == 3
    assert details["generated_tokens"] == 4  # three words and EOS
    assert [t["text"] for t in details["tokens"]] == ["one", " two", " three", "</s>"]
    assert details["tokens"][-1]["special"] is True
    assert [t["text"] for t in details["prefill"]] == ["one", " two", " three"]
    assert r.headers["x-request-id"] == "abc-123"
    assert r.headers["x-prompt-tokens"] == "3"
    assert r.headers["x-generated-tokens"] == "4"
    for name in ("x-queue-time", "x-inference-time", "x-time-per-token"):
        assert int(r.headers[name]) >= 0
    assert r.headers["x-adapter-id"] == ""


def test_generate_adapter_stop_full_text(gateway: Served) -> None:
    r = httpx.post(
        f"{gateway.url}/generate",
        json={
            "inputs": "a b c d",
            "parameters": {
                "adapter_id": "org/public",
                "stop": ["C"],
                "return_full_text": True,
                "details": True,
            },
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"] == "a b c dA B C"
    assert r.json()["details"]["finish_reason"] == "stop_sequence"
    assert r.headers["x-adapter-id"] == "org/public"


def test_request_id_is_generated_and_unsafe_ids_replaced(gateway: Served) -> None:
    url = f"{gateway.url}/generate"
    r1 = httpx.post(url, json={"inputs": "x"})
    r2 = httpx.post(url, json={"inputs": "x"}, headers={"x-request-id": "bad id"})
    r3 = httpx.post(url, json={"inputs": "x"}, headers={"x-request-id": "a" * 200})
    assert len(r1.headers["x-request-id"]) == 32
    assert r2.headers["x-request-id"] not in ("bad id", r1.headers["x-request-id"])
    assert len(r3.headers["x-request-id"]) == 32


def test_generate_stream_last_event_carries_text(gateway: Served) -> None:
    r = httpx.post(
        f"{gateway.url}/generate_stream",
        json={"inputs": "hello big world", "parameters": {"max_new_tokens": 10}},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert [e["token"]["text"] for e in events] == ["hello", " big", " world", "</s>"]
    assert all(e["generated_text"] is None for e in events[:-1])
    assert events[-1]["generated_text"] == "hello big world"
    assert events[-1]["details"]["finish_reason"] == "eos_token"
    assert events[-1]["details"]["generated_tokens"] == 4


def test_stream_length_finish_merges_last_token(gateway: Served) -> None:
    r = httpx.post(
        f"{gateway.url}/generate_stream",
        json={"inputs": "a b c d e", "parameters": {"max_new_tokens": 2}},
    )
    events = sse_events(r.text)
    assert len(events) == 2
    assert events[-1]["token"]["text"] == " b"
    assert events[-1]["details"]["finish_reason"] == "length"


def test_compat_route_list_and_stream(gateway: Served) -> None:
    r = httpx.post(f"{gateway.url}/", json={"inputs": "p q", "parameters": {"max_new_tokens": 1}})
    assert r.status_code == 200
    assert r.json() == [{"generated_text": "p"}]
    r = httpx.post(
        f"{gateway.url}/",
        json={"inputs": "p q", "stream": True, "parameters": {"max_new_tokens": 1}},
    )
    assert sse_events(r.text)[-1]["generated_text"] == "p"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"inputs": "x", "parameters": {"temperature": -1}}, "temperature"),
        ({"inputs": "x", "parameters": {"top_p": 1.5}}, "top_p"),
        ({"inputs": "x", "parameters": {"max_new_tokens": 0}}, "max_new_tokens"),
        (
            {
                "inputs": "x",
                "parameters": {
                    "adapter_id": "a",
                    "merged_adapters": {"ids": ["a"], "weights": [1]},
                },
            },
            "merged_adapters",
        ),
        (
            {"inputs": "x", "parameters": {"merged_adapters": {"ids": ["a", "b"], "weights": [1]}}},
            "length",
        ),
        ({"inputs": "x", "parameters": {"best_of": 2}}, "sampling"),
        ({"inputs": "x", "parameters": {"best_of": 2, "do_sample": True, "seed": 1}}, "seed"),
        ({"parameters": {}}, "inputs"),
    ],
)
def test_validation_errors_are_422(gateway: Served, body: dict[str, Any], fragment: str) -> None:
    r = httpx.post(f"{gateway.url}/generate", json=body)
    assert r.status_code == 422
    err = r.json()
    assert set(err) == {"error", "error_type"}
    assert err["error_type"] == "validation"
    assert fragment in err["error"]


def test_engine_validation_error_is_http_error(gateway: Served) -> None:
    r = httpx.post(
        f"{gateway.url}/generate_stream",
        json={"inputs": "x", "parameters": {"max_new_tokens": 5000}},
    )
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation"


def test_stream_only_rules(gateway: Served) -> None:
    r = httpx.post(
        f"{gateway.url}/generate_stream",
        json={"inputs": "x", "parameters": {"decoder_input_details": True}},
    )
    assert r.status_code == 422


def test_adapter_load_failure_is_424(gateway: Served) -> None:
    r = httpx.post(
        f"{gateway.url}/generate", json={"inputs": "x", "parameters": {"adapter_id": "nope/none"}}
    )
    assert r.status_code == 424
    assert r.json() == {
        "error": "adapter nope/none could not be loaded",
        "error_type": "generation",
    }


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1,2]", b'{"inputs": 5}'])
def test_malformed_json_has_error_shape(gateway: Served, raw: bytes) -> None:
    r = httpx.post(
        f"{gateway.url}/generate", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation"
    assert "x-request-id" in r.headers


def test_unknown_route_and_method(gateway: Served) -> None:
    r = httpx.get(f"{gateway.url}/nope")
    assert r.status_code == 404
    assert r.json()["error_type"] == "not_found"
    r = httpx.get(f"{gateway.url}/generate")
    assert r.status_code == 405
    assert set(r.json()) == {"error", "error_type"}


def test_alternatives_and_best_of(gateway: Served) -> None:
    r = httpx.post(
        f"{gateway.url}/generate",
        json={
            "inputs": "u v",
            "parameters": {
                "details": True,
                "return_k_alternatives": 2,
                "best_of": 2,
                "do_sample": True,
            },
        },
    )
    assert r.status_code == 200, r.text
    details = r.json()["details"]
    assert len(details["tokens"][0]["alternative_tokens"]) == 2
    assert len(details["best_of_sequences"]) == 1
    assert details["best_of_sequences"][0]["generated_text"] == "u v"


def test_unenforceable_response_format_is_422_before_queueing(gateway: Served) -> None:
    before = len(gateway.backend.requests)  # type: ignore[attr-defined]
    bad = {
        "type": "json_schema",
        "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}},
    }
    r = httpx.post(
        f"{gateway.url}/generate", json={"inputs": "x", "parameters": {"response_format": bad}}
    )
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation"
    assert "response_format" in r.json()["error"]
    assert len(gateway.backend.requests) == before  # type: ignore[attr-defined]
    good = {
        "type": "json_schema",
        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
    }
    r = httpx.post(
        f"{gateway.url}/generate", json={"inputs": "x", "parameters": {"response_format": good}}
    )
    assert r.status_code == 200


def test_engine_request_ids_are_unique_even_for_a_reused_request_id(gateway: Served) -> None:
    for _ in range(2):
        httpx.post(
            f"{gateway.url}/generate", json={"inputs": "x"}, headers={"x-request-id": "same"}
        )
    sent = [r["request_id"] for r in gateway.backend.requests[-2:]]  # type: ignore[attr-defined]
    assert sent[0] != sent[1]
    assert all(rid.startswith("same.") for rid in sent)


def test_openapi_and_docs(gateway: Served) -> None:
    spec = httpx.get(f"{gateway.url}/openapi.json").json()
    for path in (
        "/generate",
        "/generate_stream",
        "/",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
        "/tokenize",
        "/health",
        "/info",
        "/metrics",
    ):
        assert path in spec["paths"], path
    assert "GenerateRequest" in spec["components"]["schemas"]
    docs = httpx.get(f"{gateway.url}/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
