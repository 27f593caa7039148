"""Incremental detokenization: token text that never splits a UTF-8 character or drops a space."""

from __future__ import annotations

from typing import Any

# Tokens of context kept before the new ones: enough for SentencePiece-style leading-space rules.
_CONTEXT = 5


class IncrementalDetokenizer:
    """Turns one new token id at a time into the text it adds.

    Decoding a lone token loses context (SentencePiece drops the leading space of a word at the
    start of a string; a byte-fallback token may be half a character), so each step decodes a small
    window ending at the new token and emits the difference with the same window without it. Bytes
    that do not yet form a character are held back until they do.
    """

    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_ids[-_CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now complete (possibly ``""``)."""
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        prefix_text = decode(
            self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=False
        )
        new_text = decode(self.ids[self.prefix_offset :], skip_special_tokens=False)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            # Keep the window small: later decodes only need the last few ids.
            if self.prefix_offset > _CONTEXT:
                cut = self.prefix_offset - _CONTEXT
                del self.ids[:cut]
                self.prefix_offset -= cut
                self.read_offset -= cut
            return delta
        return ""
