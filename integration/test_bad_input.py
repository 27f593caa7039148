"""Bad input through the deployed gateway: every case is a 4xx with the error shape, no 5xx, and
the gateway (and the engine behind it) keep serving afterwards."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import Process
from .stack import wait_engine_idle

_JSON = {"content-type": "application/json"}

#: Raw bodies that are not valid requests at the JSON level.
RAW_BODIES: dict[str, bytes] = {
    "truncated JSON": b'{"inputs": "Hello", "parameters": {',
    "not JSON": b"inputs=Hello",
    "empty body": b"",
    "invalid UTF-8": b'{"inputs": "\xff\xfe\xfa"}',
    "NaN": b'{"inputs": "Hello", "parameters": {"temperature": NaN}}',
    "Infinity": b'{"inputs": "Hello", "parameters": {"top_p": Infinity}}',
    "-Infinity": b'{"inputs": "Hello", "parameters": {"repetition_penalty": -Infinity}}',
    "JSON array": b'["Hello"]',
    "inputs not a string": b'{"inputs": 5}',
}

#: Every parameter of API.md outside its range (or against a rule with another parameter).
BAD_PARAMETERS: dict[str, dict[str, Any]] = {
    "max_new_tokens 0": {"max_new_tokens": 0},
    "max_new_tokens negative": {"max_new_tokens": -5},
    "max_new_tokens past max_total_tokens": {"max_new_tokens": 100_000},
    "temperature negative": {"temperature": -0.5},
    "top_k 0": {"top_k": 0},
    "top_p 0": {"top_p": 0.0},
    "top_p above 1": {"top_p": 1.5},
    "typical_p 0": {"typical_p": 0.0},
    "typical_p 1": {"typical_p": 1.0},
    "repetition_penalty 0": {"repetition_penalty": 0.0},
    "frequency_penalty above 2": {"frequency_penalty": 2.5},
    "presence_penalty below -2": {"presence_penalty": -2.5},
    "truncate 0": {"truncate": 0},
    "truncate past max_input_length": {"truncate": 1_000_000},
    "return_k_alternatives negative": {"return_k_alternatives": -1},
    "best_of 0": {"best_of": 0},
    "best_of past max_best_of": {"best_of": 50, "do_sample": True},
    "best_of without sampling": {"best_of": 2},
    "best_of with seed": {"best_of": 2, "do_sample": True, "seed": 1},
    "too many stop sequences": {"stop": [f"s{i}" for i in range(50)]},
    "adapter_id with merged_adapters": {
        "adapter_id": "demo/pirate",
        "merged_adapters": {"ids": ["demo/pirate"], "weights": [1.0]},
    },
    "merged_adapters ids and weights differ": {
        "merged_adapters": {"ids": ["demo/pirate", "demo/shakespeare"], "weights": [1.0]}
    },
    "merged_adapters unknown strategy": {
        "merged_adapters": {"ids": ["demo/pirate"], "weights": [1.0], "merge_strategy": "avg"}
    },
    "unknown adapter_source": {"adapter_id": "demo/pirate", "adapter_source": "ftp"},
    "response_format unknown type": {"response_format": {"type": "xml"}},
    "response_format bad schema": {
        "response_format": {"type": "json_schema", "schema": {"type": "no-such-type"}}
    },
    "wrong type": {"max_new_tokens": "ten"},
}


def _assert_error(r: httpx.Response) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body["error"], str)
    assert isinstance(body["error_type"], str)
    assert r.headers.get("x-request-id")


@pytest.mark.parametrize("name", list(RAW_BODIES))
def test_malformed_bodies(gateway: Process, name: str) -> None:
    for route in ("/generate", "/generate_stream", "/", "/v1/completions", "/tokenize"):
        r = httpx.post(f"{gateway.url}{route}", content=RAW_BODIES[name], headers=_JSON, timeout=60)
        _assert_error(r)


def test_parameters_not_an_object(gateway: Process) -> None:
    body = b'{"inputs": "Hello", "parameters": "fast"}'
    for route in ("/generate", "/generate_stream", "/"):
        _assert_error(httpx.post(f"{gateway.url}{route}", content=body, headers=_JSON, timeout=60))


@pytest.mark.parametrize("name", list(BAD_PARAMETERS))
def test_out_of_range_parameters(gateway: Process, name: str) -> None:
    body = {"inputs": "Hello", "parameters": BAD_PARAMETERS[name]}
    for route in ("/generate", "/generate_stream"):
        r = httpx.post(f"{gateway.url}{route}", json=body, timeout=60)
        _assert_error(r)


def test_huge_and_over_long_inputs(gateway: Process) -> None:
    huge = b'{"inputs": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    r = httpx.post(f"{gateway.url}/generate", content=huge, headers=_JSON, timeout=60)
    _assert_error(r)
    assert (r.status_code, r.json()["error_type"]) == (413, "payload_too_large")
    # Under the body limit but far over max_input_length tokens: the engine's validation.
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": "Hello " * 20_000}, timeout=60)
    _assert_error(r)
    assert (r.status_code, r.json()["error_type"]) == (422, "validation")


def test_openai_bad_requests(gateway: Process) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", {"model": "", "messages": []}),
        ("/v1/chat/completions", {"model": "", "messages": [{"role": "wizard", "content": "x"}]}),
        ("/v1/chat/completions", {"model": "no/such-adapter", "messages": [{"role": "user"}]}),
        ("/v1/completions", {"model": "", "prompt": "x", "max_tokens": -1}),
        ("/v1/completions", {"model": "", "prompt": "x", "n": 0}),
        ("/v1/completions", {"model": "", "prompt": "x", "temperature": -1}),
    ]
    for route, body in cases:
        _assert_error(httpx.post(f"{gateway.url}{route}", json=body, timeout=60))


def test_still_serving_after_bad_input(gateway: Process, engine: Process) -> None:
    # Runs last in this module (pytest keeps file order): everything above left no trace.
    assert httpx.get(f"{gateway.url}/health", timeout=10).status_code == 200
    r = httpx.post(
        f"{gateway.url}/generate",
        json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    gauges = wait_engine_idle(engine.url)
    assert gauges["lorax_engine_kv_blocks_used"] == 0, gauges
