"""`response_format` checks at the front door: refuse a bad schema with a 422 before queueing.

Accepted shapes, all normalised to one internal form `{"type": "json_schema", "schema": {...}}`
(or None for plain text), which is what the engine receives:

- LoRAX: `{"type": "text"}`, `{"type": "json_object"}` (any JSON object),
  `{"type": "json_object" | "json_schema", "schema": {...}}`;
- OpenAI: `{"type": "json_object"}`,
  `{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}`.

A schema is refused (ValueError, the message names the field or keyword) when it is not valid
under its JSON Schema dialect's meta-schema, uses a dialect whose keywords mean something else
(draft-04 and older), or uses a keyword the grammar engine (llguidance) cannot enforce exactly.
The engine would fail such a request anyway; failing here gives a 422 before it queues and never
a silently weaker constraint. This module imports no torch: llguidance and jsonschema only.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import jsonschema
import jsonschema.validators
import llguidance
from jsonschema.exceptions import (
    best_match as _best_match,  # pyright: ignore[reportUnknownVariableType]
)

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Options that the engine compiles with too (lorax_engine.structured.llguidance_backend):
# whitespace is fixed by the server, so only keyword support matters for validation.
_COMPILE_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "coerce_one_of": False,
    "lenient": False,
}
_LIMITS = llguidance.LLParserLimits(verbose_errors=False)
_UNIMPLEMENTED = re.compile(r"Unimplemented keys: (\[.*\])")
_DIALECTS: tuple[Any, ...] = (
    jsonschema.Draft202012Validator,
    jsonschema.Draft201909Validator,
    jsonschema.Draft7Validator,
    jsonschema.Draft6Validator,
)
_OPENAI_SPEC_FIELDS = {"name", "schema", "strict", "description"}
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _as_schema(value: object, where: str) -> dict[str, Any]:
    # Some clients send the schema as a JSON string (e.g. a pydantic model's
    # `model_json_schema_json()`); parsing it loses nothing.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is not valid JSON: {exc.msg}") from exc
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a JSON object")
    return dict(cast(Mapping[str, Any], value))


def normalize_response_format(obj: object) -> dict[str, Any] | None:
    """One internal form for every accepted shape; None for unconstrained text.

    Raises:
        ValueError: an unknown type or field, or a missing/ill-typed schema.
    """
    if obj is None:
        return None
    if not isinstance(obj, Mapping):
        raise ValueError("response_format must be an object")
    fmt = cast(Mapping[str, Any], obj)
    kind = fmt.get("type")
    allowed: set[str] = {"type", "schema"}
    if kind == "json_schema":
        allowed.add("json_schema")
    extra = sorted(set(fmt) - allowed)
    if extra:
        raise ValueError(f"response_format: unknown field {extra[0]!r}")
    if kind == "text":
        if fmt.get("schema") is not None:
            raise ValueError("response_format: 'schema' is not allowed with type 'text'")
        return None
    if kind == "json_object":
        raw = fmt.get("schema")
        schema = {"type": "object"} if raw is None else _as_schema(raw, "response_format.schema")
        return {"type": "json_schema", "schema": schema}
    if kind != "json_schema":
        raise ValueError(
            f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}"
        )
    spec = fmt.get("json_schema")
    if spec is None:
        if fmt.get("schema") is None:
            raise ValueError("response_format: type 'json_schema' needs a 'schema'")
        return {
            "type": "json_schema",
            "schema": _as_schema(fmt["schema"], "response_format.schema"),
        }
    if fmt.get("schema") is not None:
        raise ValueError("response_format: give 'schema' or 'json_schema', not both")
    return {"type": "json_schema", "schema": _openai_schema(spec)}


def _openai_schema(spec: object) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise ValueError("response_format.json_schema must be an object")
    fields = cast(Mapping[str, Any], spec)
    extra = sorted(set(fields) - _OPENAI_SPEC_FIELDS)
    if extra:
        raise ValueError(f"response_format.json_schema: unknown field {extra[0]!r}")
    name = fields.get("name")
    if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
        raise ValueError("response_format.json_schema.name must match ^[A-Za-z0-9_-]{1,64}$")
    strict = fields.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ValueError("response_format.json_schema.strict must be a boolean")
    # `strict` needs no handling: every schema is enforced exactly, strict or not.
    if fields.get("schema") is None:
        raise ValueError("response_format.json_schema needs a 'schema'")
    return _as_schema(fields["schema"], "response_format.json_schema.schema")


def schema_key(schema: Mapping[str, Any]) -> str:
    """sha256 of the schema's canonical JSON: key order and spacing do not matter."""
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_schema(schema: Mapping[str, Any]) -> None:
    """Raise ValueError unless the grammar engine can enforce `schema` exactly."""
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
    # No format checker: `pattern` is ECMA-262, which Python's `re` would misjudge; llguidance
    # checks patterns below with the right syntax.
    meta_validator: Any = validator_cls(validator_cls.META_SCHEMA)
    error = cast(Any, _best_match(meta_validator.iter_errors(schema)))
    if error is not None:
        path: list[object] = list(error.absolute_path)
        where = "/".join(str(p) for p in path) or "(root)"
        raise ValueError(f"invalid JSON schema at {where!r}: {error.message}")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            dict(schema), overrides=_COMPILE_OPTIONS
        )
    except ValueError as exc:
        raise ValueError(f"response_format.schema: {exc}") from exc
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        grammar, None, limits=_LIMITS
    )
    # A warning means an approximation: refuse rather than enforce less than asked.
    if is_error or messages:
        message = "; ".join(messages)
        found = _UNIMPLEMENTED.search(message)
        if found:
            message = (
                f"unsupported JSON schema keyword(s) {found.group(1)}: the grammar engine "
                "cannot enforce them"
            )
        raise ValueError(f"response_format.schema: {message}")


@dataclass(slots=True)
class StructuredOutputConfig:
    """Gateway-side settings: how many schema verdicts (valid, or the error) to remember."""

    cache_size: int = 1024

    def __post_init__(self) -> None:
        if self.cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {self.cache_size}")


class ResponseFormatValidator:
    """Normalises and checks response formats, remembering verdicts by schema hash so a client
    that repeats one schema (valid or not) pays for compiling it once. Thread-safe."""

    def __init__(self, config: StructuredOutputConfig | None = None) -> None:
        self.config = config if config is not None else StructuredOutputConfig()
        self._verdicts: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __call__(self, obj: object) -> dict[str, Any] | None:
        """The normalised form of `obj` (None for text) once checked; ValueError otherwise."""
        normalised = normalize_response_format(obj)
        if normalised is None:
            return None
        schema: dict[str, Any] = normalised["schema"]
        key = schema_key(schema)
        with self._lock:
            known = key in self._verdicts
            verdict = self._verdicts.get(key)
            if known:
                self._verdicts.move_to_end(key)
                self.hits += 1
        if not known:
            try:
                check_schema(schema)
                verdict = None
            except ValueError as exc:
                verdict = str(exc)
            with self._lock:
                self.misses += 1
                self._verdicts[key] = verdict
                while len(self._verdicts) > self.config.cache_size:
                    self._verdicts.popitem(last=False)
        if verdict is not None:
            raise ValueError(verdict)
        return normalised


_default = ResponseFormatValidator()


def validate_response_format(obj: object) -> None:
    """Raise ValueError (naming the offending field or keyword) unless `obj` is a
    `response_format` whose constraint the engine can enforce exactly."""
    _default(obj)


def prepare_response_format(obj: object) -> dict[str, Any] | None:
    """Validate `obj` and return the normalised form to send to the engine (None for text)."""
    return _default(obj)
