"""The Triton greedy choice against its reference: the same ids (ties to the lowest id, across
and within blocks) and the same log-probabilities to fp32 rounding.

Runs on CUDA at the real vocabulary, or on CPU under ``TRITON_INTERPRET=1`` (started by
test_interpreter.py in a subprocess).
"""

from __future__ import annotations

import pytest
import torch
from triton_env import DEVICE, NEEDS_TRITON

from lorax_kernels.greedy.reference import greedy_logprob_ref

pytestmark = NEEDS_TRITON


def _check(logits: torch.Tensor) -> None:
    from lorax_kernels.greedy.triton import greedy_logprob

    ids, logprobs = greedy_logprob(logits)
    ref_ids, ref_logprobs = greedy_logprob_ref(logits)
    assert ids.dtype == torch.int64
    assert logprobs.dtype == torch.float32
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(logprobs, ref_logprobs, atol=1e-5, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_greedy_small(dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    vocab = 5000  # two 4096-logit blocks, the second partial
    logits = torch.randn(6, vocab, generator=gen) * 4
    logits[1, [10, 4500]] = 50.0  # a tie across blocks: the first block's id
    logits[2, [4200, 4300]] = 50.0  # a tie inside the second block
    logits[3] = float("-inf")
    logits[3, 4999] = 0.0  # the only finite logit, last: log-probability 0
    logits[4] = float("-inf")  # nothing finite: NaN, as log_softmax gives
    logits[5, :100] = float("-inf")
    _check(logits.to(DEVICE, dtype))
    _check(logits[:, :37].to(DEVICE, dtype))  # a vocabulary shorter than one block


def test_greedy_one_row_split_in_chunks() -> None:
    """A lone row is split across programs (six 4096-logit blocks: four chunks of two blocks, the
    last empty); the merge keeps the lowest id of a tie across chunks and the full log-sum-exp."""
    gen = torch.Generator().manual_seed(2)
    vocab = 5 * 4096 + 7
    logits = torch.randn(1, vocab, generator=gen) * 4
    _check(logits.to(DEVICE))
    logits[0, [9000, vocab - 1]] = 60.0  # tie between the second and third chunks
    _check(logits.to(DEVICE))
    logits[0, 100] = 70.0  # the first chunk wins
    _check(logits.to(DEVICE))
    _check(torch.full((1, vocab), float("-inf")).to(DEVICE))  # nothing finite: id 0, NaN


def test_greedy_strided_rows() -> None:
    """Rows of a wider buffer (the engine slices the padded vocabulary)."""
    gen = torch.Generator().manual_seed(1)
    wide = torch.randn(3, 300, generator=gen).to(DEVICE)
    _check(wide[:, :257])


def test_greedy_no_rows() -> None:
    from lorax_kernels.greedy.triton import greedy_logprob

    ids, logprobs = greedy_logprob(torch.empty(0, 10, device=DEVICE))
    assert ids.shape == logprobs.shape == (0,)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 64, 256])
def test_greedy_llama3_vocab(rows) -> None:
    gen = torch.Generator(device=DEVICE).manual_seed(rows)
    logits = torch.randn(rows, 128256, generator=gen, device=DEVICE) * 3
    _check(logits)
