"""ConstraintFactory: grammar cache by schema hash, make_constraint, constraint lifecycle."""

from __future__ import annotations

import gc
import json

import numpy as np
import numpy.typing as npt
import pytest
from transformers import PreTrainedTokenizerFast

from lorax_engine.structured import (
    ConstraintFactory,
    JsonSchemaFormat,
    LLGuidanceConstraint,
    StructuredOutputConfig,
    TokenConstraint,
    factory_for,
    make_constraint,
)

from .conftest import eos_id, make_bpe_tokenizer, piece_id

_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def _allowed(constraint: TokenConstraint, words: int) -> set[int]:
    mask = np.zeros(words, dtype=np.int32)
    constraint.fill_allowed(mask)
    bits = np.unpackbits(mask.view(np.uint8), bitorder="little")
    return {int(t) for t in np.nonzero(bits)[0]}


def _feed(constraint: TokenConstraint, tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    for token in tokenizer.encode(text, add_special_tokens=False):
        assert constraint.accept(token)


def test_text_gives_no_constraint(bpe_tokenizer: PreTrainedTokenizerFast) -> None:
    assert make_constraint({"type": "text"}, bpe_tokenizer) is None
    assert make_constraint(None, bpe_tokenizer) is None


def test_constraint_follows_the_document(bpe_tokenizer: PreTrainedTokenizerFast) -> None:
    factory = ConstraintFactory(bpe_tokenizer)
    constraint = factory.make({"type": "json_schema", "schema": _SCHEMA})
    assert isinstance(constraint, TokenConstraint)
    eos = eos_id(bpe_tokenizer)
    assert eos not in _allowed(constraint, factory.mask_words)
    _feed(constraint, bpe_tokenizer, '{"ok":tru')
    assert not constraint.is_finished()
    _feed(constraint, bpe_tokenizer, "e}")
    assert constraint.is_finished()
    # Complete top-level object: nothing may follow but a stop token.
    assert _allowed(constraint, factory.mask_words) == {eos}


def test_disallowed_token_kills_the_constraint_but_it_can_still_stop(
    bpe_tokenizer: PreTrainedTokenizerFast,
) -> None:
    factory = ConstraintFactory(bpe_tokenizer)
    constraint = factory.make({"type": "json_schema", "schema": _SCHEMA})
    assert isinstance(constraint, LLGuidanceConstraint)
    assert constraint.error is None
    letter_a = piece_id(bpe_tokenizer, "a")
    assert not constraint.accept(letter_a)
    assert constraint.error is not None
    assert _allowed(constraint, factory.mask_words) == {eos_id(bpe_tokenizer)}


def test_grammars_are_cached_by_schema_hash(bpe_tokenizer: PreTrainedTokenizerFast) -> None:
    factory = ConstraintFactory(bpe_tokenizer, StructuredOutputConfig(cache_size=2))
    reordered = json.loads(json.dumps(_SCHEMA, sort_keys=True))
    a = factory.make({"type": "json_schema", "schema": _SCHEMA})
    b = factory.make({"type": "json_object", "schema": reordered})
    assert (factory.cache_misses, factory.cache_hits) == (1, 1)
    # Two constraints from one cached grammar are independent.
    assert a is not None
    assert b is not None
    _feed(a, bpe_tokenizer, '{"ok":true}')
    assert a.is_finished()
    assert not b.is_finished()
    factory.make({"type": "json_schema", "schema": {"type": "integer"}})
    factory.make({"type": "json_schema", "schema": {"type": "string"}})  # evicts _SCHEMA
    factory.make({"type": "json_schema", "schema": _SCHEMA})
    assert (factory.cache_misses, factory.cache_hits) == (4, 1)


def test_make_constraint_reuses_one_factory_per_tokenizer() -> None:
    tokenizer = make_bpe_tokenizer()
    factory = factory_for(tokenizer)
    assert factory_for(tokenizer) is factory
    make_constraint({"type": "json_schema", "schema": _SCHEMA}, tokenizer)
    make_constraint({"type": "json_schema", "schema": _SCHEMA}, tokenizer)
    assert factory.cache_hits >= 1
    other = make_bpe_tokenizer()
    assert factory_for(other) is not factory
    assert factory in _registered().values()
    # The factory goes with its tokenizer. Look for this factory only: the registry is
    # process-wide, and the same gc pass may collect other tests' dropped tokenizers too (a
    # count of entries was flaky for that reason).
    del tokenizer
    gc.collect()
    assert factory not in _registered().values()
    assert factory_for(other) in _registered().values()


def _registered() -> dict[int, ConstraintFactory]:
    from lorax_engine.structured import factory as factory_module

    return factory_module._factories  # pyright: ignore[reportPrivateUsage]


def test_mask_sized_for_a_padded_model_vocab(bpe_tokenizer: PreTrainedTokenizerFast) -> None:
    factory = ConstraintFactory(bpe_tokenizer)
    constraint = factory.make({"type": "json_object"})
    assert constraint is not None
    padded = np.full(factory.mask_words + 3, -1, dtype=np.int32)
    constraint.fill_allowed(padded)
    exact = np.zeros(factory.mask_words, dtype=np.int32)
    constraint.fill_allowed(exact)
    np.testing.assert_array_equal(padded[: factory.mask_words], exact)
    assert not padded[factory.mask_words :].any()
    with pytest.raises(ValueError, match="words"):
        constraint.fill_allowed(np.zeros(factory.mask_words - 1, dtype=np.int32))


class _OneTokenBackend:
    """A stand-in grammar engine (as xgrammar would be): every document is one fixed token."""

    def __init__(self) -> None:
        self.compiled: list[str] = []

    @property
    def vocab_size(self) -> int:
        return 40

    def compile(self, fmt: JsonSchemaFormat) -> object:
        self.compiled.append(fmt.key)
        return 7

    def start(self, compiled: object) -> TokenConstraint:
        assert compiled == 7
        return _FixedToken(7)


class _FixedToken:
    def __init__(self, token: int) -> None:
        self.token = token
        self.done = False

    def fill_allowed(self, bitmask: npt.NDArray[np.int32]) -> None:
        bitmask[:] = 0
        bitmask[0] = 1 if self.done else 1 << self.token  # then only the stop token 0

    def accept(self, token_id: int) -> bool:
        self.done = token_id == self.token
        return self.done

    def is_finished(self) -> bool:
        return self.done


def test_another_grammar_backend_plugs_in(bpe_tokenizer: PreTrainedTokenizerFast) -> None:
    backend = _OneTokenBackend()
    factory = ConstraintFactory(bpe_tokenizer, backend=backend, stop_token_ids=[0])
    assert factory.mask_words == 2
    a = factory.make({"type": "json_schema", "schema": _SCHEMA})
    b = factory.make({"type": "json_object", "schema": _SCHEMA})
    assert len(backend.compiled) == 1  # cached by schema hash, whatever the backend
    assert a is not None
    assert b is not None
    assert _allowed(a, factory.mask_words) == {7}
    assert a.accept(7)
    assert a.is_finished()
    assert _allowed(a, factory.mask_words) == {0}
