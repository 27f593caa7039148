"""Triton greedy choice in one pass over the logits: argmax, max and sum of exponentials together.

PyTorch spends about five passes on it (argmax, then max, subtract-exp, sum and log for the
log-sum-exp), each reading every row's whole vocabulary: at 256 rows of 128k fp32 logits that is
~0.3 ms of a decode step (profile_step.py, H200). Each program streams a chunk of one row once with
an online (running max, argmax, sum of exp) state; the argmax's log-probability is then
``-log(sum exp(x - max))``, since the argmax is where the max is.

A row is split into chunks until about two programs per SM stream the logits: with one program per
row, a single row took 31 µs (32 dependent 16 KiB steps) where the copy takes under 1 µs. Each
chunk's state goes to a scratch row; the last program of a row to arrive (an atomic counter) merges
the states in chunk order, so the result does not depend on which program finished last.
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorax_kernels.device import SPLIT_COUNTERS, num_sms, split_counters
from lorax_kernels.pdl import launch_options, pdl_entry

# Logits per step: 16 KiB of fp32 in flight per program, 16 per thread at 8 warps.
BLOCK = 4096
# Programs per SM the chunking aims for.
WAVES = 2


@triton.jit
def _online_state(base, lo, hi, BLOCK: tl.constexpr):
    """(max, its lowest index, sum of exp(x - max)) of ``base[lo:hi]``."""
    offs = tl.arange(0, BLOCK)
    m_run = tl.full((), float("-inf"), tl.float32)
    s_run = tl.zeros((), tl.float32)
    id_run = tl.zeros((), tl.int32)
    for k0 in range(lo, hi, BLOCK):
        cols = k0 + offs
        x = tl.load(base + cols, mask=cols < hi, other=float("-inf")).to(tl.float32)
        m_blk, i_blk = tl.max(x, 0, return_indices=True, return_indices_tie_break_left=True)
        # Strictly greater: on a tie the earlier block's (lower) id stays, as torch.argmax.
        id_run = tl.where(m_blk > m_run, k0 + i_blk, id_run)
        m_new = tl.maximum(m_run, m_blk)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing finite seen yet
        s_run = s_run * tl.exp(m_run - m_safe) + tl.sum(tl.exp(x - m_safe), 0)
        m_run = m_new
    return m_run, id_run, s_run


@triton.jit
def _store_result(ids_ptr, logprobs_ptr, row, id_run, s_run):
    tl.store(ids_ptr + row, id_run.to(tl.int64))
    # x[id] - (max + log s) = -log s, as x[id] is the max (s >= 1: the max adds exp(0)). A row
    # with nothing finite has s = 0 and gets NaN, as the reference's -inf - (-inf).
    lse = tl.log(tl.where(s_run > 0, s_run, 1.0))
    tl.store(logprobs_ptr + row, tl.where(s_run > 0, -lse, float("nan")))


@triton.jit
def _greedy_kernel(
    logits_ptr,
    ids_ptr,
    logprobs_ptr,
    max_ptr,
    sum_ptr,
    arg_ptr,
    count_ptr,
    stride,
    vocab,
    chunk,
    SPLITS: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_entry(PDL)
    row = tl.program_id(0)
    split = tl.program_id(1)
    lo = split * chunk
    base = logits_ptr + row.to(tl.int64) * stride
    m_run, id_run, s_run = _online_state(base, lo, tl.minimum(lo + chunk, vocab), BLOCK)
    if SPLITS == 1:
        _store_result(ids_ptr, logprobs_ptr, row, id_run, s_run)
    else:
        # [rows, SPLITS] chunk states; the last program of the row merges them.
        tl.store(max_ptr + row * SPLITS + split, m_run)
        tl.store(sum_ptr + row * SPLITS + split, s_run)
        tl.store(arg_ptr + row * SPLITS + split, id_run)
        tl.debug_barrier()  # every store is issued before the release below
        if tl.atomic_add(count_ptr + row, 1, sem="acq_rel") == SPLITS - 1:
            offs = row * SPLITS + tl.arange(0, SPLITS)
            # .cg reads L2, where the other SMs wrote.
            m = tl.load(max_ptr + offs, cache_modifier=".cg")  # [SPLITS]
            s = tl.load(sum_ptr + offs, cache_modifier=".cg")
            arg = tl.load(arg_ptr + offs, cache_modifier=".cg")
            m_all, first = tl.max(m, 0, return_indices=True, return_indices_tie_break_left=True)
            m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
            total = tl.sum(s * tl.exp(m - m_safe), 0)  # an empty chunk has s = 0
            best = tl.sum(tl.where(tl.arange(0, SPLITS) == first, arg, 0), 0)
            tl.atomic_xchg(count_ptr + row, 0)  # re-armed for the next launch
            _store_result(ids_ptr, logprobs_ptr, row, best, total)


def greedy_logprob(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``reference.greedy_logprob_ref`` (same argument)."""
    rows, vocab = logits.shape
    ids = torch.empty(rows, dtype=torch.int64, device=logits.device)
    logprobs = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return ids, logprobs
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    block = min(BLOCK, triton.next_power_of_2(vocab))
    blocks = triton.cdiv(vocab, block)
    want = min(blocks, triton.cdiv(WAVES * num_sms(logits.device), rows))
    # A power of two (the merge's tl.arange) no larger than wanted; rounding the chunk up to whole
    # blocks may leave the last chunks empty (their state: max -inf, sum 0).
    splits = 1 if rows > SPLIT_COUNTERS else 1 << (want.bit_length() - 1)
    chunk = triton.cdiv(blocks, splits) * block
    scratch = rows * splits if splits > 1 else 0
    # Three allocations, not views into one: Triton compiles a variant per pointer alignment, and
    # an offset view would be misaligned for some row counts, compiling anew while serving.
    maxes = torch.empty(scratch, dtype=torch.float32, device=logits.device)
    sums = torch.empty(scratch, dtype=torch.float32, device=logits.device)
    args = torch.empty(scratch, dtype=torch.int32, device=logits.device)
    pdl, launch = launch_options(logits.device)
    _greedy_kernel[(rows, splits)](
        logits,
        ids,
        logprobs,
        maxes,
        sums,
        args,
        split_counters(logits.device),
        logits.stride(0),
        vocab,
        chunk,
        splits,
        block,
        pdl,
        num_warps=8,
        **launch,
    )
    return ids, logprobs
