"""A random "model" under many schemas: every document that ends with a stop token parses
and validates, on byte-level BPE and SentencePiece byte-fallback tokenizers alike."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import jsonschema.validators
import pytest
from transformers import PreTrainedTokenizerFast

from lorax_engine.structured import ConstraintFactory, StructuredOutputConfig

from .conftest import decode, eos_id, piece_id
from .sampling import random_decode

_BOUNDED_INT = {"type": "integer", "minimum": -9, "maximum": 9}

SCHEMAS: dict[str, dict[str, Any]] = {
    "nested_objects": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "address": {
                "type": "object",
                "properties": {
                    "street": {"type": "string", "maxLength": 20},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                },
                "required": ["street", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "enums": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "mixed": {"enum": [1, "a", None, True, {"k": [1]}]},
        },
        "required": ["color", "mixed"],
        "additionalProperties": False,
    },
    "array_bounds": {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "minItems": 2,
        "maxItems": 4,
    },
    "number_ranges": {
        "type": "object",
        "properties": {
            "x": {"type": "number", "minimum": -1.5, "exclusiveMaximum": 2.5},
            "n": {"type": "integer", "exclusiveMinimum": 10, "maximum": 20},
            "m": {"type": "integer", "multipleOf": 7, "minimum": 0, "maximum": 100},
        },
        "required": ["x", "n", "m"],
        "additionalProperties": False,
    },
    "strings_length_pattern": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[a-z]{1,8}-[0-9]{2}$"},
            "short": {"type": "string", "minLength": 2, "maxLength": 5},
        },
        "required": ["code", "short"],
        "additionalProperties": False,
    },
    "anyof_null": {
        "type": "object",
        "properties": {
            "a": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}]},
            "b": {"type": ["integer", "null"], "minimum": 0, "maximum": 5},
        },
        "required": ["a", "b"],
        "additionalProperties": False,
    },
    "refs_defs_recursive": {
        "$defs": {
            "point": {
                "type": "object",
                "properties": {"x": _BOUNDED_INT, "y": _BOUNDED_INT},
                "required": ["x", "y"],
                "additionalProperties": False,
            },
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "boolean"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
                },
                "required": ["v", "kids"],
                "additionalProperties": False,
            },
        },
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/point"},
            "b": {"$ref": "#/$defs/point"},
            "tree": {"$ref": "#/$defs/node"},
        },
        "required": ["a", "b", "tree"],
        "additionalProperties": False,
    },
    "formats": {
        "type": "object",
        "properties": {
            "d": {"type": "string", "format": "date"},
            "u": {"type": "string", "format": "uuid"},
            "e": {"type": "string", "format": "email", "maxLength": 30},
        },
        "required": ["d", "u", "e"],
        "additionalProperties": False,
    },
    # Only formats that jsonschema's checker really verifies (it skips `hostname` without extras).
    "more_formats": {
        "type": "object",
        "properties": {
            "t": {"type": "string", "format": "time"},
            "ip": {"type": "string", "format": "ipv4"},
            "ip6": {"type": "string", "format": "ipv6", "maxLength": 20},
        },
        "required": ["t", "ip", "ip6"],
        "additionalProperties": False,
    },
    "pattern_properties": {
        "type": "object",
        "patternProperties": {"^x[0-9]$": {"type": "boolean"}},
        "additionalProperties": False,
    },
    "optional_properties_const": {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": 0, "maximum": 3},
            "b": {"type": "boolean"},
            "c": {"const": "k"},
        },
        "additionalProperties": False,
    },
    "additional_properties_schema": {
        "type": "object",
        "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 9},
        "maxProperties": 3,
    },
    "prefix_items": {
        "type": "array",
        "prefixItems": [{"type": "boolean"}, {"enum": ["x", "y"]}],
        "items": False,
        "minItems": 2,
    },
    "draft7_tuple_items": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "array",
        "items": [{"type": "boolean"}, {"type": "null"}],
        "additionalItems": False,
    },
    "allof": {
        "allOf": [
            {
                "type": "object",
                "properties": {"a": {"type": "integer", "minimum": 0}},
                "required": ["a"],
            },
            {"properties": {"a": {"maximum": 5}}},
        ]
    },
    # Accepted only because the branches are disjoint, so oneOf == anyOf exactly.
    "oneof_disjoint": {
        "oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "maxLength": 3}]
    },
    "pattern_and_format": {"type": "string", "pattern": "^2", "format": "date"},
    "top_level_integer": {"type": "integer", "minimum": 0, "maximum": 1000},
}

_VALIDATOR_FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
_SEEDS = range(5)
_MAX_NEW_TOKENS = 300


def _forbidden(tokenizer: PreTrainedTokenizerFast, stops: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(t for t in tokenizer.all_special_ids if t not in stops)


def _decode_all(
    tokenizer: PreTrainedTokenizerFast, factory: ConstraintFactory, fmt: dict[str, Any]
) -> list[tuple[str, bool]]:
    """Five sampled runs and one greedy run: (text, ended with a stop token)."""
    forbidden = _forbidden(tokenizer, factory.stop_token_ids)
    runs: list[tuple[str, bool]] = []
    for seed, greedy in [(s, False) for s in _SEEDS] + [(99, True)]:
        constraint = factory.make(fmt)
        assert constraint is not None
        out = random_decode(
            constraint,
            factory.vocab_size,
            factory.stop_token_ids,
            seed,
            _MAX_NEW_TOKENS,
            forbidden=forbidden,
            greedy=greedy,
        )
        runs.append((decode(tokenizer, out.tokens), out.finished_with_stop))
    return runs


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_finished_document_validates(
    name: str, any_tokenizer: PreTrainedTokenizerFast
) -> None:
    schema = SCHEMAS[name]
    factory = ConstraintFactory(any_tokenizer)
    runs = _decode_all(any_tokenizer, factory, {"type": "json_schema", "schema": schema})
    finished = [text for text, done in runs if done]
    # Not vacuous: the random model has to be steered to a stop most of the time.
    assert len(finished) >= 4, runs
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=_VALIDATOR_FORMATS)
    for text in finished:
        validator.validate(json.loads(text))


def test_json_object_without_schema_is_any_object(bpe_tokenizer: PreTrainedTokenizerFast) -> None:
    factory = ConstraintFactory(bpe_tokenizer)
    runs = _decode_all(bpe_tokenizer, factory, {"type": "json_object"})
    finished = [text for text, done in runs if done]
    assert len(finished) >= 3, runs
    for text in finished:
        assert isinstance(json.loads(text), dict)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_OPEN_STRING = re.compile(r'"(?:[^"\\]|\\.)*\\?$')


@pytest.mark.parametrize(("whitespace", "allowed"), [("compact", ""), ("spaced", ", :")])
def test_whitespace_is_bounded(
    whitespace: str, allowed: str, sp_tokenizer: PreTrainedTokenizerFast
) -> None:
    config = StructuredOutputConfig(whitespace=whitespace)  # type: ignore[arg-type]
    factory = ConstraintFactory(sp_tokenizer, config)
    schema = SCHEMAS["refs_defs_recursive"]
    runs = _decode_all(sp_tokenizer, factory, {"type": "json_schema", "schema": schema})
    assert sum(done for _, done in runs) >= 3, runs
    for text, _ in runs:
        # Cut documents end inside a string at worst: drop that open string too.
        outside_strings = _OPEN_STRING.sub("", _STRING.sub('""', text))
        blanks = re.findall(r"(.)?(\s+)", outside_strings)
        if not allowed:
            assert not blanks, text
        else:
            # Exactly one space, and only right after a separator.
            assert all(prev in allowed and ws == " " for prev, ws in blanks), text


def test_several_stop_tokens_and_padded_logits(bpe_tokenizer: PreTrainedTokenizerFast) -> None:
    pad = piece_id(bpe_tokenizer, "<|pad|>")
    eos = eos_id(bpe_tokenizer)
    factory = ConstraintFactory(bpe_tokenizer, stop_token_ids=[eos, pad])
    schema = SCHEMAS["array_bounds"]
    for seed in range(4):
        constraint = factory.make({"type": "json_schema", "schema": schema})
        assert constraint is not None
        out = random_decode(
            constraint,
            factory.vocab_size,
            factory.stop_token_ids,
            seed,
            _MAX_NEW_TOKENS,
            logits_width=factory.vocab_size + 77,
        )
        assert out.finished_with_stop
        jsonschema.validate(json.loads(decode(bpe_tokenizer, out.tokens)), schema)
