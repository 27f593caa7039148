"""Start-up check: does the grammar engine see the same bytes as the detokenizer?

llguidance reads `tokenizer.json` itself and derives every token's bytes (byte-level BPE's
byte-to-unicode table, SentencePiece's `▁` and `<0xNN>` byte-fallback pieces). If its idea of
a token disagreed with what the detokenizer prints, a "valid" token sequence could print
invalid JSON. So at start-up we decode every token both ways and refuse to serve structured
output on a mismatch, instead of discovering it in a user's response.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import llguidance

# Texts whose tokenizations exercise multi-byte UTF-8 split across tokens, escapes and the
# characters JSON is made of.
PROBES: tuple[str, ...] = (
    '{"name":"Ada Lovelace","age":36,"tags":["a","b"],"ok":true,"x":null}',
    "[-1.5e+10, 0.25, 42]",
    'a "quoted" \\ back\\slash\ttab\nnewline',
    "Héllo wörld, ça va? Ünïcödé",
    "日本語の文章と中文字符",
    "emoji 🙂👍🏽 and ∑ √",
    "  two leading spaces",
)


class TokenizerMappingError(ValueError):
    """The tokenizer's tokens do not map cleanly onto bytes for the grammar engine."""


def _decode_deltas(backend: Any, prefix: list[int], seqs: Sequence[list[int]]) -> list[str]:
    # Decoding after a fixed prefix gives each sequence's text as the incremental detokenizer
    # prints it mid-output (SentencePiece decoders strip a leading space only at the start).
    head = backend.decode(prefix, skip_special_tokens=False)
    texts = backend.decode_batch([prefix + s for s in seqs], skip_special_tokens=False)
    return [t[len(head) :] if t.startswith(head) else "\0" + t for t in texts]


def check_tokenizer(
    tokenizer: Any, ll_tokenizer: llguidance.LLTokenizer, stop_token_ids: Sequence[int]
) -> None:
    """Raise `TokenizerMappingError` unless every token decodes to the same text both ways.

    Checks every non-special token on its own (those whose bytes are valid UTF-8), the
    `PROBES` as whole sequences (multi-byte characters split across byte tokens), and that
    the stop tokens are special tokens inside the vocabulary.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    vocab = ll_tokenizer.vocab_size
    for stop in stop_token_ids:
        if not 0 <= stop < vocab or not ll_tokenizer.is_special_token(stop):
            raise TokenizerMappingError(f"stop token id {stop} is not a special token of the vocab")

    prefix: list[int] = list(backend.encode("a", add_special_tokens=False).ids)
    ll_head = ll_tokenizer.decode_bytes(prefix)
    singles: list[list[int]] = []
    expected: list[bytes] = []
    for tok in range(vocab):
        if ll_tokenizer.is_special_token(tok):
            continue
        raw = ll_tokenizer.decode_bytes([tok])
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a piece of a character: covered by the probes
        singles.append([tok])
        expected.append(raw)
    for probe in PROBES:
        ids = list(backend.encode(probe, add_special_tokens=False).ids)
        singles.append(ids)
        expected.append(ll_tokenizer.decode_bytes(prefix + ids)[len(ll_head) :])

    got = _decode_deltas(backend, prefix, singles)
    bad = [
        (ids, exp, text)
        for ids, exp, text in zip(singles, expected, got, strict=True)
        if text.encode() != exp
    ]
    if bad:
        ids, exp, text = bad[0]
        raise TokenizerMappingError(
            f"tokenizer does not map cleanly onto bytes: {len(bad)} of {len(singles)} checks "
            f"differ, e.g. tokens {ids[:8]}: grammar engine sees {exp!r}, detokenizer prints "
            f"{text!r}"
        )
