"""Prompts of a target token count.

A prompt is a seeded sequence of common English words, each of which is a single token (with
its leading space) in the usual BPE and SentencePiece vocabularies. How many tokens a word costs
on the server under test is *measured* once through its ``/tokenize`` route (the calibration);
when the server has none, an assumed words-per-token ratio is used and recorded in the results,
and the prompt lengths the server reports back are recorded per request either way.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["PromptCalibration", "build_prompt", "calibrate"]

_VOCABULARY = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an had they you were their one all we can her has there been if more when will "
    "would who so no time people year way day man thing woman life child world school state "
    "family student group country problem hand part place case week company system program "
    "question work government number night point home water room mother area money story fact "
    "month lot right study book eye job word business issue side kind head house service friend "
    "father power hour game line end member law car city community name president team minute "
    "idea kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force"
)
_WORDS = _VOCABULARY.split()

_CALIBRATION_WORDS = 2000


@dataclass(slots=True, frozen=True)
class PromptCalibration:
    """How many tokens a prompt word costs, and how many special tokens the server adds."""

    method: Literal["tokenize", "assumed"]
    tokens_per_word: float
    special_tokens: int = 0

    def __post_init__(self) -> None:
        if self.tokens_per_word <= 0:
            raise ValueError("tokens_per_word must be > 0")
        if self.special_tokens < 0:
            raise ValueError("special_tokens must be >= 0")

    @classmethod
    def assumed(cls, words_per_token: float) -> PromptCalibration:
        """No tokenizer to ask: assume ``words_per_token`` (0.75 is the usual English rule)."""
        if words_per_token <= 0:
            raise ValueError("words_per_token must be > 0")
        return cls("assumed", 1.0 / words_per_token, 0)

    def words_for(self, input_len: int) -> int:
        """Words that make a prompt of about ``input_len`` tokens (special tokens included)."""
        return max(1, round((input_len - self.special_tokens) / self.tokens_per_word))


def build_prompt(seed: int, input_len: int, calibration: PromptCalibration) -> str:
    """The prompt of a trace request: deterministic in ``seed``, about ``input_len`` tokens."""
    rng = random.Random(seed)
    return " ".join(rng.choices(_WORDS, k=calibration.words_for(input_len)))


async def calibrate(count_tokens: Callable[[str], Awaitable[int]]) -> PromptCalibration:
    """Measure the server's tokenizer: ``count_tokens(text)`` is the length of ``/tokenize``'s
    answer for ``text`` (special tokens included)."""
    special = await count_tokens("")
    sample = " ".join(random.Random(0).choices(_WORDS, k=_CALIBRATION_WORDS))
    total = await count_tokens(sample)
    if total <= special:
        raise ValueError(f"tokenizer gave {total} tokens for {_CALIBRATION_WORDS} words")
    return PromptCalibration("tokenize", (total - special) / _CALIBRATION_WORDS, special)
