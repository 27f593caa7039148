"""Greedy choice with its log-probability (Triton on CUDA, reference elsewhere)."""

from __future__ import annotations

import torch

from lorax_kernels import dispatch
from lorax_kernels.greedy.reference import greedy_logprob_ref

__all__ = ["greedy_logprob"]


@torch.library.custom_op("lorax_kernels::greedy_logprob", mutates_args=())
def _greedy_op(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return greedy_logprob_ref(logits)


@_greedy_op.register_kernel("cuda")
def _greedy_cuda(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from lorax_kernels.greedy.triton import greedy_logprob

    return greedy_logprob(logits)


@_greedy_op.register_fake
def _greedy_fake(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = logits.shape[0]
    return logits.new_empty(rows, dtype=torch.int64), logits.new_empty(rows, dtype=torch.float32)


def greedy_logprob(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's argmax (``[rows]`` int64; ties to the lowest id) and its log-probability
    (``[rows]`` float32, the log-softmax of the row at the argmax) from ``[rows, vocab]`` logits."""
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must be [rows, vocab] with vocab > 0, got {tuple(logits.shape)}")
    return dispatch.call(_greedy_op, _greedy_cuda, logits)
