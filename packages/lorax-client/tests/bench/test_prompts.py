"""Prompts of a target token count: calibration, mean sizing, and exact cutting."""

from __future__ import annotations

import re

import pytest

from lorax.bench.prompts import (
    PromptCalibration,
    build_prompt,
    calibrate,
    fit_prompt,
    fitted_prompts,
    prompts_for,
)
from lorax.bench.workload import TraceRequest

pytestmark = pytest.mark.anyio


def _pieces(text: str) -> list[tuple[int, int]]:
    """A toy tokenizer: BOS, then every word split into pieces of at most 3 characters (the
    leading space goes with the first piece)."""
    spans = [(0, 0)]
    for match in re.finditer(r"\s*\S+", text):
        start = match.start()
        word_start = start + len(match.group()) - len(match.group().lstrip())
        cuts = [*range(word_start + 3, match.end(), 3), match.end()]
        for cut in cuts:
            spans.append((start, cut))
            start = cut
    return spans


async def _count(text: str) -> int:
    return len(_pieces(text))


async def _spans(text: str) -> list[tuple[int, int]]:
    return _pieces(text)


async def test_calibration_measures_the_tokenizer() -> None:
    calibration = await calibrate(_count)
    assert calibration.method == "tokenize"
    assert calibration.special_tokens == 1
    assert 1.5 < calibration.tokens_per_word < 3.5


def test_mean_sizing_is_deterministic_and_about_right() -> None:
    calibration = PromptCalibration("tokenize", 2.0, 1)
    assert build_prompt(5, 41, calibration) == build_prompt(5, 41, calibration)
    assert build_prompt(5, 41, calibration) != build_prompt(6, 41, calibration)
    assert len(build_prompt(5, 41, calibration).split()) == 20
    assert len(build_prompt(5, 1, calibration).split()) == 1
    assumed = PromptCalibration.assumed(0.75)
    assert assumed.tokens_per_word == pytest.approx(4 / 3)
    assert assumed.special_tokens == 0


@pytest.mark.parametrize("input_len", [2, 3, 7, 64, 300])
async def test_fitted_prompts_have_exactly_their_length(input_len: int) -> None:
    calibration = await calibrate(_count)
    prompt = await fit_prompt(9, input_len, calibration, _spans)
    assert len(_pieces(prompt)) == input_len
    assert prompt == prompt.strip()


async def test_a_length_of_only_special_tokens_gets_one_word() -> None:
    calibration = await calibrate(_count)
    assert len((await fit_prompt(9, 1, calibration, _spans)).split()) == 1


async def test_a_truncating_tokenizer_gets_its_longest_prompt() -> None:
    async def truncating(text: str) -> list[tuple[int, int]]:
        return _pieces(text)[:50]

    prompt = await fit_prompt(1, 80, PromptCalibration("tokenize", 2.0, 1), truncating)
    assert len(_pieces(prompt)) > 80  # it kept drawing words, then gave up


async def test_trace_prompts_are_kept_and_the_others_fitted() -> None:
    trace = [
        TraceRequest(1.0, 0.5, 12, 4, prompt_seed=3),
        TraceRequest(1.0, 0.5, 5, 4, prompt_seed=4, prompt="given as is"),
    ]
    calibration = await calibrate(_count)
    fitted = await fitted_prompts(trace, calibration, _spans)
    assert len(_pieces(fitted[0])) == 12
    assert fitted[1] == "given as is"
    assert prompts_for(trace, calibration)[1] == "given as is"
    assert prompts_for(trace, calibration)[0].split()[:3] == fitted[0].split()[:3]
