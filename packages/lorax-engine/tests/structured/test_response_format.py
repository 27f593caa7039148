"""Response formats and schemas that must be refused, each with a message naming why."""

from __future__ import annotations

import math
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from lorax_engine.structured import ConstraintFactory, parse_response_format, schema_key


def test_text_and_none_are_unconstrained() -> None:
    assert parse_response_format(None) is None
    assert parse_response_format({"type": "text"}) is None


def test_json_object_without_schema_means_any_object() -> None:
    fmt = parse_response_format({"type": "json_object"})
    assert fmt is not None
    assert fmt.schema == {"type": "object"}


def test_lorax_json_object_with_schema_equals_normalised_form() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    lorax = parse_response_format({"type": "json_object", "schema": schema})
    normalised = parse_response_format({"type": "json_schema", "schema": schema})
    assert lorax == normalised


def test_schema_key_ignores_key_order() -> None:
    a = {"type": "object", "properties": {"x": {"type": "integer", "minimum": 1}}}
    b = {"properties": {"x": {"minimum": 1, "type": "integer"}}, "type": "object"}
    assert schema_key(a) == schema_key(b)
    assert schema_key(a) != schema_key({**a, "required": ["x"]})


@pytest.mark.parametrize(
    ("response_format", "reason"),
    [
        ("json", "must be an object"),
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "needs a 'schema'"),
        ({"type": "json_object", "schema": "{}"}, "must be a JSON object"),
        ({"type": "json_object", "extra": 1}, "'extra'"),
        ({"type": "text", "schema": {"type": "object"}}, "not allowed with type 'text'"),
    ],
)
def test_malformed_response_format(response_format: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_response_format(response_format)


# Refused before compiling: invalid under the dialect's meta-schema, or a dialect/keyword that
# would be enforced as something weaker.
@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "object", "required": "a"}, "at 'required'"),
        ({"type": "strin"}, "at 'type'"),
        ({"type": "object", "properties": {"a": 5}}, "at 'properties/a'"),
        ({"type": "integer", "minimum": 0, "exclusiveMinimum": True}, "at 'exclusiveMinimum'"),
        ({"type": "array", "items": [{"type": "integer"}]}, "at 'items'"),
        ({"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer"}, r"\$schema"),
        ({"type": "object", "x-guidance": {"whitespace_flexible": True}}, "x-guidance"),
        ({"type": "number", "maximum": math.nan}, "not JSON"),
    ],
)
def test_invalid_schema_is_refused_by_parse(schema: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_response_format({"type": "json_schema", "schema": schema})


# Valid JSON Schema that the grammar engine cannot enforce exactly, or that it finds broken.
@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "array", "contains": {"type": "integer"}}, "contains"),
        ({"not": {"type": "string"}}, r'\["not"\]'),
        ({"if": {"type": "string"}, "then": {"maxLength": 3}}, r'"if", "then"'),
        ({"type": "object", "propertyNames": {"pattern": "^a"}}, "propertyNames"),
        ({"type": "object", "dependentSchemas": {"a": {}}}, "dependentSchemas"),
        ({"type": "object", "unevaluatedProperties": False}, "unevaluatedProperties"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
        (
            {"type": "object", "properties": {"a": {"type": "integer"}}, "minProperties": 1},
            "min/maxProperties",
        ),
        ({"type": "string", "pattern": "[a-z"}, "unclosed character class"),
        ({"type": "string", "pattern": "^(?=a)b$"}, "look-around"),
        ({"type": "string", "format": "bogus"}, "Unknown format: bogus"),
        ({"$ref": "#/$defs/missing"}, "/\\$defs/missing"),
        ({"$ref": "https://example.com/s.json"}, "example.com"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength"),
        ({"type": "string", "format": "date", "pattern": "^a"}, "Unsatisfiable"),
    ],
)
def test_unenforceable_schema_is_refused_by_compile(
    schema: dict[str, Any], reason: str, bpe_tokenizer: PreTrainedTokenizerFast
) -> None:
    factory = ConstraintFactory(bpe_tokenizer)
    with pytest.raises(ValueError, match=reason):
        factory.make({"type": "json_schema", "schema": schema})
