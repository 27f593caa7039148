"""Property test: random schemas built from the supported keywords, decoded by the random
model. Whatever the schema, a document that ends with a stop token validates, and the engine
refuses a schema exactly when the gateway would."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from lorax_engine.structured import ConstraintFactory

from .conftest import decode
from .sampling import random_decode

_PATTERNS = ["^[a-z]{1,6}$", "^[0-9]{2,4}$", "^(ab|cd)+$", "^[A-Z][a-z]*$"]
_NUMBER = st.one_of(st.integers(-50, 50), st.sampled_from([-2.5, -0.5, 0.25, 1.5, 10.75]))


def _bounds(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    lo = st.one_of(st.none(), _NUMBER)
    hi = st.one_of(st.none(), _NUMBER)

    def build(lo_v: float | None, hi_v: float | None, exclusive: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"type": kind}
        if lo_v is not None:
            out["exclusiveMinimum" if exclusive else "minimum"] = lo_v
        if hi_v is not None:
            out["maximum"] = hi_v
        return out

    return st.builds(build, lo, hi, st.booleans())


_LEAVES: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.builds(
        lambda lo, span: {"type": "string", "minLength": lo, "maxLength": lo + span},
        st.integers(0, 3),
        st.integers(0, 6),
    ),
    st.sampled_from(_PATTERNS).map(lambda p: {"type": "string", "pattern": p}),
    _bounds("integer"),
    _bounds("number"),
    # Bounded: jsonschema's multipleOf check overflows on the huge numbers a random model writes.
    st.builds(
        lambda k: {"type": "integer", "multipleOf": k, "minimum": -1000, "maximum": 1000},
        st.integers(2, 7),
    ),
    st.sampled_from([0.5, 0.25]).map(
        lambda k: {"type": "number", "multipleOf": k, "minimum": -100, "maximum": 100}
    ),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(
        st.one_of(st.integers(-9, 9), st.text("abc", max_size=3), st.none()),
        min_size=1,
        max_size=4,
        unique=True,
    ).map(lambda values: {"enum": values}),
)


def _extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    def obj(props: dict[str, dict[str, Any]], n_required: int) -> dict[str, Any]:
        names = sorted(props)
        return {
            "type": "object",
            "properties": props,
            "required": names[:n_required],
            "additionalProperties": False,
        }

    def arr(items: dict[str, Any], lo: int, span: int) -> dict[str, Any]:
        return {"type": "array", "items": items, "minItems": lo, "maxItems": lo + span}

    return st.one_of(
        st.builds(
            obj,
            st.dictionaries(st.sampled_from("abcdef"), children, min_size=1, max_size=3),
            st.integers(0, 3),
        ),
        st.builds(arr, children, st.integers(0, 2), st.integers(0, 2)),
        st.builds(lambda s: {"anyOf": [s, {"type": "null"}]}, children),
    )


SCHEMAS = st.recursive(_LEAVES, _extend, max_leaves=6)


@pytest.fixture(scope="module")
def factory(bpe_tokenizer: PreTrainedTokenizerFast) -> ConstraintFactory:
    return ConstraintFactory(bpe_tokenizer)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schema=SCHEMAS, seed=st.integers(0, 2**16))
def test_random_schemas(
    schema: dict[str, Any],
    seed: int,
    factory: ConstraintFactory,
    bpe_tokenizer: PreTrainedTokenizerFast,
) -> None:
    gateway = pytest.importorskip("lorax_gateway.structured_output")
    fmt = {"type": "json_schema", "schema": schema}
    try:
        constraint = factory.make(fmt)
    except ValueError:
        # Only unsatisfiable combinations are refused (e.g. an exclusive minimum above the
        # maximum); the front door must refuse them too.
        with pytest.raises(ValueError, match="nsatisfiable"):
            gateway.validate_response_format(fmt)
        return
    gateway.validate_response_format(fmt)
    assert constraint is not None
    out = random_decode(constraint, factory.vocab_size, factory.stop_token_ids, seed, 200)
    if out.finished_with_stop:
        jsonschema.validate(json.loads(decode(bpe_tokenizer, out.tokens)), schema)
