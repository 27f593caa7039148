"""``lorax_kernels.greedy_logprob`` on the CPU (the reference): log_softmax at the argmax."""

from __future__ import annotations

import pytest
import torch

from lorax_kernels import greedy_logprob


def test_matches_log_softmax_at_the_argmax() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 1000, generator=gen) * 5
    logits[2, [7, 900]] = 99.0
    ids, logprobs = greedy_logprob(logits)
    assert ids.tolist()[2] == 7  # ties: the lowest id
    assert torch.equal(ids, logits.argmax(-1))
    expected = torch.log_softmax(logits.double(), -1).gather(1, ids.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(logprobs.double(), expected, atol=1e-5, rtol=0)


def test_rejects_other_shapes() -> None:
    with pytest.raises(ValueError, match="rows, vocab"):
        greedy_logprob(torch.zeros(3))
    with pytest.raises(ValueError, match="vocab > 0"):
        greedy_logprob(torch.zeros(3, 0))


def test_custom_op_passes_opcheck() -> None:
    logits = torch.randn(3, 50)
    torch.library.opcheck(torch.ops.lorax_kernels.greedy_logprob, (logits,))
