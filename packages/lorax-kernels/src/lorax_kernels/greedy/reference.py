"""Plain-PyTorch greedy choice: each row's argmax and its log-probability."""

from __future__ import annotations

import torch


def greedy_logprob_ref(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([rows] int64 argmax, [rows] float32 log_softmax at the argmax)`` of ``[rows, vocab]``
    logits; ties go to the lowest id, as ``torch.argmax`` does."""
    x = logits.float()
    ids = x.argmax(dim=-1)
    return ids, x.gather(1, ids.unsqueeze(1)).squeeze(1) - x.logsumexp(dim=-1)
