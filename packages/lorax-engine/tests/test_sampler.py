"""Sampler: each parameter against a direct computation on small logits."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from lorax_engine.core.sampler import Sampler, SamplingRow, seeded_uniforms
from lorax_engine.params import SamplingParams
from lorax_engine.structured import MaskFiller

V = 16


def row(
    tokens: list[int] | None = None,
    prompt: int = 1,
    step: int = 0,
    **kw: object,
) -> SamplingRow:
    kw.setdefault("max_new_tokens", 8)
    return SamplingRow(SamplingParams(**kw), tokens or [0], prompt, step)  # type: ignore[arg-type]


def logits_of(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_greedy_picks_argmax_with_exact_logprob() -> None:
    lg = torch.randn(3, V)
    out = Sampler()(lg.clone(), [row(), row(temperature=0.0), row(temperature=0.0, do_sample=True)])
    assert out.token_ids == lg.argmax(-1).tolist()
    expected = torch.log_softmax(lg, -1).gather(1, lg.argmax(-1, keepdim=True)).squeeze(1)
    assert out.logprobs == pytest.approx(expected.tolist(), abs=1e-5)


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    lg = logits_of([2.0, 1.9, -1.0, -1.1] + [-9.0] * (V - 4))
    out = Sampler()(lg.clone(), [row(tokens=[0], repetition_penalty=2.0)])
    assert out.token_ids == [1]  # 2.0 / 2 = 1.0 < 1.9
    out = Sampler()(
        logits_of([-1.0, -1.05] + [-9.0] * (V - 2)), [row(tokens=[0], repetition_penalty=1.5)]
    )
    assert out.token_ids == [1]  # -1.0 * 1.5 = -1.5 < -1.05


def test_frequency_and_presence_penalties_count_only_generated_tokens() -> None:
    base = [3.0, 2.5, 2.0] + [-9.0] * (V - 3)
    # Token 0 is in the prompt only: no OpenAI penalty applies to it.
    out = Sampler()(logits_of(base), [row(tokens=[0], prompt=1, frequency_penalty=2.0)])
    assert out.token_ids == [0]
    # Generated twice: 3.0 - 2 * 0.4 = 2.2 < 2.5.
    out = Sampler()(logits_of(base), [row(tokens=[5, 0, 0], prompt=1, frequency_penalty=0.4)])
    assert out.token_ids == [1]
    out = Sampler()(logits_of(base), [row(tokens=[5, 0], prompt=1, presence_penalty=0.6)])
    assert out.token_ids == [1]


class _OnlyToken:
    """A TokenConstraint that allows one token."""

    def __init__(self, token: int) -> None:
        self.token = token

    def fill_allowed(self, bitmask: npt.NDArray[np.int32]) -> None:
        bitmask[:] = 0
        bitmask[self.token // 32] = 1 << (self.token % 32)

    def accept(self, token_id: int) -> bool:
        return token_id == self.token

    def is_finished(self) -> bool:
        return False


@pytest.mark.parametrize(
    "params", [{}, {"do_sample": True, "seed": 1}, {"repetition_penalty": 2.0}]
)
def test_grammar_masks_apply_to_their_rows_only(params: dict[str, Any]) -> None:
    lg = torch.zeros(3, V)
    lg[:, 3] = 5.0
    filler = MaskFiller(mask_words=1, max_rows=3, num_threads=1)
    try:
        # Greedy rows take the fast argmax path unless a mask is given: it must not be skipped.
        masks = filler.start([(0, _OnlyToken(7)), (2, _OnlyToken(9))])
        out = Sampler()(lg, [row(**params), row(), row(**params)], masks=masks)
    finally:
        filler.close()
    assert out.token_ids == [7, 3, 9]
    assert out.logprobs[0] == pytest.approx(0.0)  # the only allowed token has all the mass


def test_top_k_one_is_greedy_even_when_sampling() -> None:
    lg = torch.randn(4, V)
    rows = [row(do_sample=True, top_k=1, seed=s) for s in range(4)]
    assert Sampler()(lg.clone(), rows).token_ids == lg.argmax(-1).tolist()


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05] + [0.0] * (V - 4)) + 1e-9
    lg = probs.log().unsqueeze(0)
    seen = {
        Sampler()(lg.clone(), [row(do_sample=True, top_p=0.75, seed=s)]).token_ids[0]
        for s in range(200)
    }
    assert seen == {0, 1}


def test_typical_p_drops_the_atypical_tokens() -> None:
    probs = torch.tensor([0.6, 0.2, 0.1, 0.1] + [0.0] * (V - 4)) + 1e-9
    lg = probs.log().unsqueeze(0)
    seen = {
        Sampler()(lg.clone(), [row(do_sample=True, typical_p=0.3, seed=s)]).token_ids[0]
        for s in range(200)
    }
    # Entropy 1.09 nats; surprises 1.61 (p=0.2) and 0.51 (p=0.6) are closest, and reach 0.3.
    assert seen == {0, 1}


def test_temperature_sharpens_and_flattens() -> None:
    lg = logits_of([1.0, 0.0] + [-30.0] * (V - 2))

    def freq(t: float) -> float:
        picks = [
            Sampler()(lg.clone(), [row(do_sample=True, temperature=t, seed=s)]).token_ids[0]
            for s in range(400)
        ]
        return picks.count(0) / len(picks)

    cold, warm = freq(0.2), freq(5.0)
    assert cold > 0.95
    assert 0.4 < warm < 0.7


def test_sampling_matches_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125] + [0.0] * (V - 4)) + 1e-12
    lg = probs.log().unsqueeze(0)
    picks = [Sampler()(lg.clone(), [row(do_sample=True, seed=s)]).token_ids[0] for s in range(2000)]
    freq = np.bincount(picks, minlength=4)[:4] / len(picks)
    assert np.allclose(freq, [0.5, 0.25, 0.125, 0.125], atol=0.04)


def test_seeds_are_reproducible_and_batch_independent() -> None:
    lg = torch.randn(1, V)
    alone = Sampler()(lg.clone(), [row(do_sample=True, seed=42, step=3)]).token_ids
    mixed = Sampler()(
        torch.cat([torch.randn(2, V), lg]),
        [row(do_sample=True, seed=1), row(), row(do_sample=True, seed=42, step=3)],
    ).token_ids
    assert mixed[2] == alone[0]
    assert seeded_uniforms([42], [3]).tolist() == seeded_uniforms([42], [3]).tolist()
    assert seeded_uniforms([42], [3]) != seeded_uniforms([42], [4])


def test_alternatives_are_the_top_k_logprobs() -> None:
    lg = torch.randn(2, V)
    out = Sampler()(lg.clone(), [row(return_k_alternatives=3), row()])
    lp = torch.log_softmax(lg[0], -1)
    top = lp.topk(3)
    assert [a[0] for a in out.alternatives[0]] == top.indices.tolist()
    assert [a[1] for a in out.alternatives[0]] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert out.alternatives[1] == []
