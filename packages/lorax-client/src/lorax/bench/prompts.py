"""Prompts of a target token count.

A prompt is a seeded sequence of common English words, each of which is a single token (with
its leading space) in the usual BPE and SentencePiece vocabularies. How many tokens a word costs
on the server under test is *measured* once through its ``/tokenize`` route (the calibration);
when the server has none, an assumed words-per-token ratio is used and recorded in the results,
and the prompt lengths the server reports back are recorded per request either way. When the
server's ``/tokenize`` gives character spans (LoRAX's does), each prompt can be cut to exactly
its token count (:func:`fit_prompt`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from lorax.bench.workload import TraceRequest

__all__ = [
    "PromptCalibration",
    "TokenSpans",
    "build_prompt",
    "calibrate",
    "fit_prompt",
    "fitted_prompts",
    "prompts_for",
]

TokenSpans = Callable[[str], Awaitable[list[tuple[int, int]]]]
"""``spans(text)``: the ``(start, stop)`` character span of each token of ``text`` on the server
(special tokens included, with empty spans)."""

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
# fit_prompt's draws beyond the first (each as long as the first) before it gives up.
_MAX_EXTENSIONS = 8


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


async def fit_prompt(
    seed: int, input_len: int, calibration: PromptCalibration, spans: TokenSpans
) -> str:
    """A prompt of exactly ``input_len`` tokens on the server: the words of
    :func:`build_prompt` and some more, tokenized once, cut where token ``input_len`` ends.
    (Cutting at a token boundary keeps the tokens before it, with the tokenizers in use.)"""
    rng = random.Random(seed)
    batch = calibration.words_for(input_len) + max(4, calibration.words_for(input_len) // 4)
    text = " ".join(rng.choices(_WORDS, k=batch))
    tokens = await spans(text)
    for _ in range(_MAX_EXTENSIONS):
        if len(tokens) >= input_len:
            break
        text += " " + " ".join(rng.choices(_WORDS, k=batch))
        tokens = await spans(text)
    if len(tokens) < input_len:
        return text  # a tokenizer that stops counting (it truncates): the best there is
    cut = max(stop for _, stop in tokens[:input_len])
    # Only special tokens fit (input_len <= their count): one word is the shortest prompt.
    return text[:cut] if cut > 0 else text.split(" ", 1)[0]


async def calibrate(count_tokens: Callable[[str], Awaitable[int]]) -> PromptCalibration:
    """Measure the server's tokenizer: ``count_tokens(text)`` is the length of ``/tokenize``'s
    answer for ``text`` (special tokens included)."""
    special = await count_tokens("")
    sample = " ".join(random.Random(0).choices(_WORDS, k=_CALIBRATION_WORDS))
    total = await count_tokens(sample)
    if total <= special:
        raise ValueError(f"tokenizer gave {total} tokens for {_CALIBRATION_WORDS} words")
    return PromptCalibration("tokenize", (total - special) / _CALIBRATION_WORDS, special)


def prompts_for(trace: list[TraceRequest], calibration: PromptCalibration) -> list[str]:
    """Each request's prompt: the trace's own, or :func:`build_prompt` to its input length."""
    return [
        r.prompt if r.prompt is not None else build_prompt(r.prompt_seed, r.input_len, calibration)
        for r in trace
    ]


async def fitted_prompts(
    trace: list[TraceRequest],
    calibration: PromptCalibration,
    spans: TokenSpans,
    concurrency: int = 16,
) -> list[str]:
    """Each request's prompt: the trace's own, or :func:`fit_prompt` to exactly its input
    length (one tokenize call per request, ``concurrency`` at a time)."""
    slots = asyncio.Semaphore(concurrency)

    async def one(request: TraceRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        async with slots:
            return await fit_prompt(request.prompt_seed, request.input_len, calibration, spans)

    return list(await asyncio.gather(*(one(r) for r in trace)))
