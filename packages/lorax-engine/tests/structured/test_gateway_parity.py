"""The gateway's front-door check and the engine's compiler agree on every schema, so a
request the gateway lets through never fails in the engine and vice versa."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from lorax_engine.structured import ConstraintFactory

from .test_schema_sampling import SCHEMAS

gateway = pytest.importorskip("lorax_gateway.structured_output")

REFUSED: list[dict[str, Any]] = [
    {"type": "array", "uniqueItems": True},
    {"not": {"type": "string"}},
    {"oneOf": [{"type": "integer"}, {"type": "number"}]},
    {"type": "object", "properties": {"a": {}}, "minProperties": 1},
    {"type": "strin"},
    {"type": "string", "pattern": "(?=a)"},
    {"type": "string", "format": "zipcode"},
    {"$schema": "http://json-schema.org/draft-04/schema#"},
    {"type": "integer", "exclusiveMinimum": True},
    {"type": "object", "x-guidance": {}},
    {"type": "string", "minLength": 3, "maxLength": 1},
]


def _engine_accepts(factory: ConstraintFactory, schema: dict[str, Any]) -> bool:
    try:
        factory.make({"type": "json_schema", "schema": schema})
    except ValueError:
        return False
    return True


def _gateway_accepts(schema: dict[str, Any]) -> bool:
    try:
        normalised = gateway.prepare_response_format({"type": "json_schema", "schema": schema})
    except ValueError:
        return False
    assert normalised == {"type": "json_schema", "schema": schema}
    return True


@pytest.mark.parametrize(
    "schema",
    [*SCHEMAS.values(), *REFUSED],
    ids=[*SCHEMAS, *(f"refused{i}" for i in range(len(REFUSED)))],
)
def test_gateway_and_engine_agree(
    schema: dict[str, Any], bpe_tokenizer: PreTrainedTokenizerFast
) -> None:
    factory = ConstraintFactory(bpe_tokenizer)
    assert _gateway_accepts(schema) == _engine_accepts(factory, schema)
    assert _gateway_accepts(schema) == (schema in SCHEMAS.values())
