"""Tiny real tokenizers, trained here (no hub): byte-level BPE (GPT-2/Llama-3 style) and
SentencePiece-style BPE with byte fallback (Llama-2/Mistral style)."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


def _corpus() -> list[str]:
    rng = random.Random(0)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "name",
        "age",
        "city",
        "tags",
        "value",
        "items",
        "count",
        "true",
        "false",
        "null",
    ]
    lines = []
    for i in range(400):
        doc = {
            rng.choice(words): rng.choice([i, -i * 1.5, rng.choice(words), None, True]),
            "name": f"{rng.choice(words)} {rng.choice(words)}",
            "list": [rng.randint(-99, 999) for _ in range(rng.randint(0, 4))],
        }
        lines.append(json.dumps(doc))
        lines.append(json.dumps(doc, separators=(",", ":")))
    lines += ["The quick brown fox jumps over the lazy dog. Héllo wörld, ça va?"] * 10
    return lines


def make_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE, 700 tokens, specials `<|eos|>`=0, `<|bos|>`=1, `<|pad|>`=2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<|eos|>", "<|bos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|eos|>", bos_token="<|bos|>", pad_token="<|pad|>"
    )


def make_sentencepiece_tokenizer(decoder: decoders.Decoder | None = None) -> Tokenizer:
    """SentencePiece-style BPE: `▁` for spaces, `<0xNN>` pieces for bytes not in the vocab."""
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoder or decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    # A small alphabet so that accented and CJK characters fall back to byte pieces.
    trainer = trainers.BpeTrainer(
        vocab_size=900, special_tokens=specials, limit_alphabet=70, show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    # The trainer registers the byte pieces as added special tokens; in a real SentencePiece
    # conversion they are ordinary vocabulary entries that decode to their byte.
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not t["content"].startswith("<0x")]
    return Tokenizer.from_str(json.dumps(spec))


def make_sp_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE with byte fallback; `</s>`=2 is EOS."""
    return PreTrainedTokenizerFast(
        tokenizer_object=make_sentencepiece_tokenizer(),
        eos_token="</s>",
        bos_token="<s>",
        unk_token="<unk>",
    )


@pytest.fixture(scope="session")
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    return make_bpe_tokenizer()


@pytest.fixture(scope="session")
def sp_tokenizer() -> PreTrainedTokenizerFast:
    return make_sp_tokenizer()


@pytest.fixture(params=["bpe", "sentencepiece"])
def any_tokenizer(
    request: pytest.FixtureRequest,
    bpe_tokenizer: PreTrainedTokenizerFast,
    sp_tokenizer: PreTrainedTokenizerFast,
) -> PreTrainedTokenizerFast:
    return bpe_tokenizer if request.param == "bpe" else sp_tokenizer


def eos_id(tokenizer: PreTrainedTokenizerFast) -> int:
    """`eos_token_id`, narrowed for the type checker."""
    eos = tokenizer.eos_token_id
    assert isinstance(eos, int)
    return eos


def piece_id(tokenizer: PreTrainedTokenizerFast, piece: str) -> int:
    """The id of one vocabulary piece."""
    token = tokenizer.convert_tokens_to_ids(piece)
    assert isinstance(token, int)
    return token


def decode(tokenizer: PreTrainedTokenizerFast, ids: list[int]) -> str:
    """Decode with special tokens kept, as the engine's detokenizer prints them."""
    text = tokenizer.decode(ids)
    assert isinstance(text, str)
    return text
