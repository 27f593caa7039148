"""The prefill path compiles the same Triton variants whatever a step's batch looks like.

Triton compiles a kernel once per class of each integer argument (equal to 1, divisible by 16,
other) on its first launch: seconds on the GPU, while every request of that step waits. The
engine's start-up warm-up runs a few prefill steps; an argument that follows the batch (its
sequence count, its block table's width) would leave variants for the first real steps to
compile. The keys are computed on the CPU, as Triton's launcher computes them.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch
from sm90_compile import captured_launches, specialization

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter replaces the JIT functions"
)

BF16 = torch.bfloat16


def _prefill_attention_keys(lengths: tuple[int, ...]) -> set[str]:
    from lorax_kernels.prefill_attention.triton import paged_prefill_attention

    tokens, block = sum(lengths), 16
    q = torch.empty(tokens, 32, 128, dtype=BF16)
    cache = torch.empty(1024, block, 8, 128, dtype=BF16)
    width = max(-(-n // block) for n in lengths)  # the step's block table: its longest sequence
    tables = torch.zeros(len(lengths), width, dtype=torch.int32)
    starts = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    lens = torch.tensor(lengths, dtype=torch.int32)
    with captured_launches() as launches:
        paged_prefill_attention(q, cache, cache, tables, starts, lens, 0.1)
    return {specialization(launch) for launch in launches}


def test_prefill_attention_compiles_one_variant_for_any_batch() -> None:
    """1, 2, 16 and 17 sequences; tables 1, 2, 16 and 33 blocks wide; token totals of every
    class: one key (it was nine before the kernel stopped specialising on the two)."""
    batches = [tuple([n] * seqs) for seqs in (1, 2, 16, 17) for n in (1, 16, 17, 256, 520)]
    keys = set().union(*(_prefill_attention_keys(b) for b in batches))
    assert len(keys) == 1, sorted(keys)
