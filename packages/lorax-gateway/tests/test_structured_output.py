"""response_format at the gateway: every accepted shape normalises to one form; every schema
the engine could not enforce exactly is refused with a message naming why."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from lorax_gateway.structured_output import (
    ResponseFormatValidator,
    StructuredOutputConfig,
    normalize_response_format,
    prepare_response_format,
    validate_response_format,
)
from lorax_gateway.testing import Served, serve

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
NORMALISED = {"type": "json_schema", "schema": PERSON}


@pytest.mark.parametrize(
    "shape",
    [
        {"type": "json_object", "schema": PERSON},  # LoRAX
        {"type": "json_schema", "schema": PERSON},  # LoRAX / normalised
        {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},  # OpenAI
        {
            "type": "json_schema",
            "json_schema": {"name": "p", "schema": PERSON, "strict": True, "description": "d"},
        },
        {"type": "json_object", "schema": json.dumps(PERSON)},  # schema sent as a JSON string
    ],
)
def test_every_shape_normalises_to_one_form(shape: dict[str, Any]) -> None:
    assert normalize_response_format(shape) == NORMALISED
    assert prepare_response_format(shape) == NORMALISED


def test_text_and_plain_json_object() -> None:
    assert normalize_response_format(None) is None
    assert normalize_response_format({"type": "text"}) is None
    any_object = {"type": "json_schema", "schema": {"type": "object"}}
    assert normalize_response_format({"type": "json_object"}) == any_object
    validate_response_format({"type": "json_object"})
    validate_response_format({"type": "text"})


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        ("json", "must be an object"),
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "json_object", "foo": 1}, "unknown field 'foo'"),
        ({"type": "json_object", "json_schema": {"schema": PERSON}}, "unknown field 'json_schema'"),
        ({"type": "text", "schema": PERSON}, "not allowed with type 'text'"),
        ({"type": "json_schema"}, "needs a 'schema'"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "json_schema needs a 'schema'"),
        (
            {"type": "json_schema", "json_schema": {"schema": PERSON}, "schema": PERSON},
            "not both",
        ),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": PERSON}}, "name"),
        ({"type": "json_schema", "json_schema": {"schema": PERSON, "strict": "yes"}}, "strict"),
        ({"type": "json_schema", "json_schema": {"schema": PERSON, "extra": 1}}, "'extra'"),
        ({"type": "json_schema", "json_schema": []}, "json_schema must be an object"),
        ({"type": "json_object", "schema": "{not json"}, "not valid JSON"),
        ({"type": "json_object", "schema": [1]}, "must be a JSON object"),
    ],
)
def test_malformed_response_format(shape: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        validate_response_format(shape)


@pytest.mark.parametrize(
    "schema",
    [
        PERSON,
        {"$defs": {"p": PERSON}, "type": "array", "items": {"$ref": "#/$defs/p"}, "maxItems": 3},
        {"anyOf": [{"type": "string", "pattern": "^[a-z]+$"}, {"type": "null"}]},
        {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        {"enum": ["a", 1, None]},
        {"type": "string", "format": "date-time"},
        {"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "integer"}]},
        {"type": "object", "title": "Annotated", "description": "d", "examples": [{}]},
    ],
)
def test_enforceable_schemas_pass(schema: dict[str, Any]) -> None:
    validate_response_format({"type": "json_schema", "schema": schema})


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        # keywords the grammar engine cannot enforce: named, never silently dropped
        ({"type": "array", "uniqueItems": True}, r'\["uniqueItems"\]'),
        ({"type": "array", "contains": {"type": "integer"}}, "contains"),
        ({"not": {"type": "string"}}, r'\["not"\]'),
        ({"if": {"type": "string"}, "then": {"maxLength": 3}}, r'"if", "then"'),
        ({"type": "object", "propertyNames": {"maxLength": 3}}, "propertyNames"),
        ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
        ({"type": "object", "properties": {"a": {}}, "maxProperties": 1}, "maxProperties"),
        ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
        # invalid schemas
        ({"type": "strin"}, "at 'type'"),
        ({"type": "object", "required": "name"}, "at 'required'"),
        ({"type": "object", "properties": {"a": 1}}, "at 'properties/a'"),
        ({"type": "string", "maxLength": -1}, "at 'maxLength'"),
        ({"type": "string", "pattern": "[a-"}, "unclosed character class"),
        ({"type": "string", "format": "zipcode"}, "Unknown format: zipcode"),
        ({"$ref": "#/$defs/nope"}, "nope"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "Unsatisfiable"),
        # dialects and options that would weaken the constraint
        ({"$schema": "http://json-schema.org/draft-04/schema#"}, r"\$schema"),
        ({"type": "integer", "exclusiveMinimum": True, "minimum": 0}, "exclusiveMinimum"),
        ({"type": "object", "x-guidance": {"lenient": True}}, "x-guidance"),
    ],
)
def test_refused_schemas_name_the_reason(schema: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        validate_response_format({"type": "json_schema", "schema": schema})


def test_verdicts_are_cached_by_schema_hash() -> None:
    validator = ResponseFormatValidator(StructuredOutputConfig(cache_size=2))
    reordered = json.loads(json.dumps(PERSON, sort_keys=True))
    validator({"type": "json_object", "schema": PERSON})
    validator({"type": "json_schema", "json_schema": {"name": "p", "schema": reordered}})
    assert (validator.misses, validator.hits) == (1, 1)
    bad = {"type": "json_schema", "schema": {"type": "array", "uniqueItems": True}}
    for _ in range(2):  # a refused schema is remembered too, with the same message
        with pytest.raises(ValueError, match="uniqueItems"):
            validator(bad)
    assert (validator.misses, validator.hits) == (2, 2)
    validator({"type": "json_object"})  # evicts PERSON (least recently used)
    validator({"type": "json_object", "schema": PERSON})
    assert validator.misses == 4


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="cache_size"):
        StructuredOutputConfig(cache_size=0)


def test_module_imports_no_torch() -> None:
    code = (
        "import sys, lorax_gateway.structured_output as m; "
        "m.validate_response_format({'type': 'json_object'}); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


_UNIQUE = {"type": "array", "uniqueItems": True}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/generate",
            {
                "inputs": "x",
                "parameters": {"response_format": {"type": "json_schema", "schema": _UNIQUE}},
            },
        ),
        (
            "/v1/chat/completions",
            {
                "model": "",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "u", "schema": _UNIQUE},
                },
            },
        ),
    ],
)
def test_unenforceable_schema_is_a_422_over_http(
    gateway: Served, path: str, body: dict[str, Any]
) -> None:
    r = httpx.post(f"{gateway.url}{path}", json=body)
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation"
    assert "uniqueItems" in r.json()["error"]


def test_malformed_schema_is_a_422_over_http(gateway: Served) -> None:
    bad = {"type": "object", "required": "name"}
    r = httpx.post(
        f"{gateway.url}/generate",
        json={
            "inputs": "x",
            "parameters": {"response_format": {"type": "json_object", "schema": bad}},
        },
    )
    assert r.status_code == 422
    assert "at 'required'" in r.json()["error"]


# --- through the real engine (the `local` backend: lorax-engine in this process) -------------

COLOR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
    },
    "required": ["color", "n", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    pytest.importorskip("lorax_engine")
    from lorax_engine.demo import build_demo
    from lorax_gateway import GatewaySettings, create_app
    from lorax_gateway.backends.local import LocalBackend

    options = {
        "model_id": str(build_demo(tmp_path_factory.mktemp("demo"))),
        "device": "cpu",
        "dtype": "float32",
        "max_batch_total_tokens": 4096,
    }
    backend = LocalBackend.from_options(options)
    app = create_app(GatewaySettings(backend="local", backend_options=options), backend)
    with serve(app, backend, timeout_s=120.0) as served:
        yield served


def test_openai_chat_json_schema_through_the_engine(engine_gateway: Served) -> None:
    sdk = openai.OpenAI(base_url=f"{engine_gateway.url}/v1", api_key="none", max_retries=0)
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "color", "schema": COLOR, "strict": True},
    }
    for seed in range(3):
        chat = sdk.chat.completions.create(
            model="",
            messages=[{"role": "user", "content": "A color, as JSON."}],
            max_tokens=120,
            temperature=1.0,
            seed=seed,
            response_format=response_format,
        )
        choice = chat.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content or ""), COLOR)
    stream = sdk.chat.completions.create(
        model="",
        messages=[{"role": "user", "content": "A color, as JSON."}],
        max_tokens=120,
        seed=7,
        temperature=1.0,
        stream=True,
        response_format=response_format,
    )
    chunks = [chunk.choices[0] for chunk in stream if chunk.choices]
    assert chunks[-1].finish_reason == "stop"
    jsonschema.validate(json.loads("".join(c.delta.content or "" for c in chunks)), COLOR)


def test_lorax_generate_stream_json_through_the_engine(engine_gateway: Served) -> None:
    body = {
        "inputs": "A color, as JSON:",
        "parameters": {
            "max_new_tokens": 120,
            "do_sample": True,
            "seed": 11,
            "response_format": {"type": "json_object", "schema": COLOR},
        },
    }
    r = httpx.post(f"{engine_gateway.url}/generate_stream", json=body, timeout=60)
    assert r.status_code == 200
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    last = events[-1]
    assert last["details"]["finish_reason"] == "eos_token", last
    jsonschema.validate(json.loads(last["generated_text"]), COLOR)
