"""The start-up check accepts tokenizers that map cleanly onto bytes and refuses the rest."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lorax_engine.structured import (
    ConstraintFactory,
    StructuredOutputConfig,
    TokenizerMappingError,
)

from .conftest import eos_id, make_sentencepiece_tokenizer, piece_id


def test_byte_level_bpe_and_sentencepiece_pass(any_tokenizer: PreTrainedTokenizerFast) -> None:
    factory = ConstraintFactory(any_tokenizer)
    assert factory.vocab_size == len(any_tokenizer)
    assert factory.stop_token_ids == (eos_id(any_tokenizer),)


def test_sentencepiece_fixture_really_uses_byte_fallback(
    sp_tokenizer: PreTrainedTokenizerFast,
) -> None:
    # Otherwise the test above would not cover byte pieces at all.
    pieces = sp_tokenizer.convert_ids_to_tokens(
        sp_tokenizer.encode("日本", add_special_tokens=False)
    )
    assert all(p.startswith("<0x") for p in pieces if p != "▁")


def test_raw_tokenizers_object_needs_explicit_stop_ids(
    bpe_tokenizer: PreTrainedTokenizerFast,
) -> None:
    raw: Tokenizer = bpe_tokenizer.backend_tokenizer
    with pytest.raises(ValueError, match="eos_token_id"):
        ConstraintFactory(raw)
    factory = ConstraintFactory(raw, stop_token_ids=[0])
    assert factory.stop_token_ids == (0,)


@pytest.mark.parametrize(
    "decoder",
    [
        # The grammar engine reads "▁" as its three UTF-8 bytes; these decoders print a blank
        # or another character for it, so a grammar-valid token stream would print other text.
        decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()]),
        decoders.Sequence([decoders.Replace("▁", "_"), decoders.ByteFallback(), decoders.Fuse()]),
    ],
    ids=["metaspace", "replace-underscore"],
)
def test_decoder_that_disagrees_with_the_grammar_engine_is_refused(
    decoder: decoders.Decoder,
) -> None:
    broken = make_sentencepiece_tokenizer(decoder=decoder)
    with pytest.raises(TokenizerMappingError, match="detokenizer prints"):
        ConstraintFactory(broken, stop_token_ids=[2])
    # The check can be turned off (at the operator's risk); the factory then builds.
    ConstraintFactory(broken, StructuredOutputConfig(check_tokenizer=False), stop_token_ids=[2])


def test_decoder_the_grammar_engine_cannot_read_is_refused(
    bpe_tokenizer: PreTrainedTokenizerFast,
) -> None:
    spec = json.loads(bpe_tokenizer.backend_tokenizer.to_str())
    spec["decoder"] = None  # byte-level BPE that would print "Ġ" for a space
    with pytest.raises(ValueError, match="cannot read this tokenizer"):
        ConstraintFactory(Tokenizer.from_str(json.dumps(spec)), stop_token_ids=[0])


def test_stop_token_must_be_special(bpe_tokenizer: PreTrainedTokenizerFast) -> None:
    ordinary = piece_id(bpe_tokenizer, "a")
    with pytest.raises(TokenizerMappingError, match="not a special token"):
        ConstraintFactory(bpe_tokenizer, stop_token_ids=[ordinary])
    with pytest.raises(ValueError, match="out of range"):
        ConstraintFactory(bpe_tokenizer, stop_token_ids=[len(bpe_tokenizer) + 5])


def test_wordpiece_is_refused() -> None:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[UNK]", "[SEP]"], show_progress=False
    )
    tok.train_from_iterator(['{"a": 1, "b": [true, null]}', "hello world"] * 20, trainer)
    with pytest.raises(ValueError, match="cannot read this tokenizer"):
        ConstraintFactory(tok, stop_token_ids=[1])


def test_non_fast_tokenizer_is_refused() -> None:
    with pytest.raises(TypeError, match="fast"):
        ConstraintFactory(object(), stop_token_ids=[0])
