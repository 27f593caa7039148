"""`parameters.response_format` -> a checked JSON schema with a stable cache key.

The gateway sends the normalised form `{"type": "json_schema", "schema": {...}}`; the LoRAX
shapes (`{"type": "text"}`, `{"type": "json_object", "schema"?: {...}}`) are accepted too, so an
engine reached over HTTP by an older gateway behaves the same. Any problem is a `ValueError`
whose message names the offending field or schema keyword.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

# Dialects whose keywords mean what the grammar engine implements. Draft-04 and older spell
# `exclusiveMinimum` as a boolean modifier, which would be enforced as something weaker.
_DIALECTS = (
    jsonschema.Draft202012Validator,
    jsonschema.Draft201909Validator,
    jsonschema.Draft7Validator,
    jsonschema.Draft6Validator,
)
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True, slots=True)
class JsonSchemaFormat:
    """A response format that constrains the output to JSON valid under `schema`.

    `key` is the sha256 of the schema's canonical JSON (sorted keys, no blanks): two requests
    with the same schema, however its keys were ordered, share one compiled grammar.
    """

    schema: Mapping[str, Any]
    key: str


def schema_key(schema: Mapping[str, Any]) -> str:
    """Stable hash of a JSON schema, independent of key order."""
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_response_format(obj: object) -> JsonSchemaFormat | None:
    """Parse a LoRAX/normalised `response_format`; None means unconstrained text.

    Raises:
        ValueError: unknown type or field, a schema that is not a JSON object, a schema that is
            invalid under its JSON Schema dialect, or an unsupported dialect.
    """
    if obj is None:
        return None
    if not isinstance(obj, Mapping):
        raise ValueError("response_format must be an object")
    fmt: Mapping[str, Any] = obj
    extra = sorted(set(fmt) - {"type", "schema"})
    if extra:
        raise ValueError(f"response_format: unknown field {extra[0]!r}")
    kind = fmt.get("type")
    if kind == "text":
        if fmt.get("schema") is not None:
            raise ValueError("response_format: 'schema' is not allowed with type 'text'")
        return None
    if kind not in ("json_object", "json_schema"):
        raise ValueError(
            f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}"
        )
    schema = fmt.get("schema")
    if schema is None:
        if kind == "json_schema":
            raise ValueError("response_format: type 'json_schema' needs a 'schema'")
        schema = _ANY_OBJECT
    if not isinstance(schema, Mapping):
        raise ValueError("response_format.schema must be a JSON object")
    check_schema(schema)
    return JsonSchemaFormat(schema=schema, key=schema_key(schema))


def check_schema(schema: Mapping[str, Any]) -> None:
    """Validate `schema` against its dialect's meta-schema (2020-12 unless `$schema` says).

    Formats are not checked here: `pattern` is an ECMA-262 regex, which Python's `re` would
    misjudge; the grammar compiler checks patterns with the right syntax.
    """
    if "x-guidance" in schema:
        # Grammar-engine options would let a request loosen whitespace or keyword handling.
        raise ValueError("response_format.schema: keyword 'x-guidance' is not accepted")
    try:
        json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"response_format.schema is not JSON: {exc}") from exc
    validator_cls: Any = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    if validator_cls not in _DIALECTS:
        raise ValueError(
            f"$schema: dialect {schema.get('$schema')!r} is not supported "
            "(use draft-06, draft-07, 2019-09 or 2020-12)"
        )
    error = jsonschema.exceptions.best_match(
        validator_cls(validator_cls.META_SCHEMA).iter_errors(schema)
    )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise ValueError(f"invalid JSON schema at {where!r}: {error.message}")
