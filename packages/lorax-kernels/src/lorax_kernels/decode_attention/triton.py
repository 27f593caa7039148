"""Triton paged decode attention with split-K ("flash-decoding") merged inside the one launch.

One program handles one (sequence, kv head, context partition): it loads the group's query heads
once (GQA: ``num_q_heads / num_kv_heads`` rows, padded to 16 for ``tl.dot``) and streams the
partition's K/V pages, ``BLOCK_N`` tokens per step gathered through the block table, with an online
softmax. A sequence that fits one partition writes its output directly. A longer one has each of
its partitions write an unnormalised partial (acc, max, sum) and take a ticket from an arrival
counter per (sequence, kv head); the program holding the last ticket merges the partials in
partition order (so the result does not depend on which program finished last), writes the output
and re-arms the counter to zero for the next launch. Partitions past a sequence's length exit at
once, so the grid depends only on static shapes, and the counters need no reset between launches:
the op is CUDA-graph safe in one kernel launch per call.

fp8 caches are upcast to fp16 right after the load (with the query); their K scale is folded into
the softmax scale and their V scale into the final normalisation, so the fp32 math is that of
16-bit caches.
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)), constexpr parameters and
# tl.static_range are not typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false
# pyright: reportGeneralTypeIssues=false

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lorax_kernels.device import num_sms, split_counters
from lorax_kernels.paged_attention_steps import load_kv_block, online_softmax_step, scores
from lorax_kernels.pdl import launch_options, pdl_entry

LOG2E = 1.4426950408889634

# Grids of at least this many programs per SM are not split: at batch 64, context 1k on the H200
# the unsplit grid (512 programs) ran 8% faster than two partitions plus a merge pass.
NO_SPLIT_PROGRAMS_PER_SM = 2
# Smaller grids split each sequence into at most this many partitions per SM's worth of programs
# (batch 16, context 16k: 101% of copy bandwidth instead of 84% at ~2 per SM) ...
SPLIT_PROGRAMS_PER_SM = 4
# ... and at most this many per sequence. Run 7's partition sweep (bench_decode_attention.py, H200,
# the merge folding a whole GQA group at once): at batch 1, 32 partitions of 512 tokens read a
# 16k context in 30.6 µs against 38.0 for 16 of 1024, and cost 1.3 µs at 4k (16.3 against 15.0).
# Session 4, with the slower merge, had 16 beating 32.
MAX_PARTITIONS = 32
# The shortest partition is MIN_PARTITION tokens for grids of up to PROGRAMS_PER_MIN_PARTITION
# (sequence, kv head) programs and doubles with every doubling of the grid beyond: the merge costs
# about as much as several 64-token steps, and a grid of ~1 program per SM gains little from more
# programs. Run 7's sweep: 64 tokens at batch 1, 256-512 at batch 16 (context 1k: 4 x 256 in
# 29.7 µs, 2 x 512 in 27.8, unsplit 36.1).
MIN_PARTITION = 64
PROGRAMS_PER_MIN_PARTITION = 32
# A sequence of at most this many shortest partitions is not split (batch 1, context 128: 4.7 µs
# unsplit against 7.0 in two; batch 16, context 512: 19.9 unsplit, 18.6 in two).
UNSPLIT_PARTITIONS = 2
# Split sequences of grids of at most this many sequences are merged by a second launch rather
# than by the last partition of each to finish (partition sweep, H200, run 6, the group's heads
# merged together: batch 1, bf16 KV, context 512 6.72 vs 7.52 µs, 1k 7.52 vs 7.81, 4k 15.62 vs
# 15.05, 16k 41.87 vs 38.26; at batch 16 the in-launch merge is as fast or faster, e.g. context
# 1k 34.18 vs 38.51 µs).
TWO_LAUNCH_MAX_SEQS = 1
# Partial rows (query heads x partitions) the merging program folds per step: one
# [heads, MERGE_ROWS / heads, head_dim] fp32 load.
MERGE_ROWS = 64


@triton.jit
def _sequence_split(length, min_partition, unsplit_upto, num_parts):
    """``(partition, partitions used)`` of a sequence of ``length`` tokens (``Split``'s rule):
    sized from its own length, so a short sequence in a graph captured for long ones is not cut
    into the partitions of the longest. A padding row (length 0) uses none."""
    split_size = min_partition
    while split_size * num_parts < length:
        split_size *= 2
    partition = tl.where(length > unsplit_upto, split_size, tl.maximum(length, 1))
    return partition, tl.cdiv(length, partition)


@triton.jit
def _merge_partials(
    acc_ptr,
    m_ptr,
    l_ptr,
    out_ptr,
    seq,
    kvh,
    n_parts,
    v_scale,
    stride_as,
    stride_ah,
    stride_ap,
    stride_ms,
    stride_mh,
    stride_os,
    stride_oh,
    GROUP: tl.constexpr,
    MERGE_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Fold the ``n_parts`` partials of every query head of kv head ``kvh`` and store the
    output. The group's heads are folded together (``MERGE_G`` = GROUP rounded up to a power of
    two), so their loads are issued at once: a head after another was a chain of dependent L2
    round trips (run 6, batch 1: the merge launch took 6.5 µs for 4 heads)."""
    offs_g = tl.arange(0, MERGE_G)
    g_mask = offs_g < GROUP
    heads = kvh * GROUP + offs_g  # [MERGE_G]
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    # Running (max, sum, acc) as [MERGE_G, BLOCK_D] (one copy per lane): loop-carried tensors.
    m_run = tl.full((MERGE_G, BLOCK_D), float("-inf"), dtype=tl.float32)
    l_run = tl.zeros((MERGE_G, BLOCK_D), dtype=tl.float32)
    acc = tl.zeros((MERGE_G, BLOCK_D), dtype=tl.float32)
    for p0 in range(0, n_parts, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        gp_mask = g_mask[:, None] & (offs_p < n_parts)[None, :]  # [MERGE_G, BLOCK_P]
        ml = seq * stride_ms + heads[:, None] * stride_mh + offs_p[None, :]
        # .cg: read L2, where the other SMs' partials landed, not a stale L1 line.
        m_p = tl.load(m_ptr + ml, mask=gp_mask, other=float("-inf"), cache_modifier=".cg")
        l_p = tl.load(l_ptr + ml, mask=gp_mask, other=0.0, cache_modifier=".cg")
        a_p = tl.load(
            acc_ptr
            + seq * stride_as
            + heads[:, None, None] * stride_ah
            + offs_p[None, :, None] * stride_ap
            + offs_d[None, None, :],
            mask=gp_mask[:, :, None] & d_mask[None, None, :],
            other=0.0,
            cache_modifier=".cg",
        )  # [MERGE_G, BLOCK_P, BLOCK_D]
        m_new = tl.maximum(m_run, tl.max(m_p, 1)[:, None])  # [MERGE_G, BLOCK_D]
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing visible yet
        alpha = tl.exp2(m_run - m_safe)
        w = tl.exp2(m_p[:, :, None] - m_safe[:, None, :])  # 0 for empty parts
        l_run = l_run * alpha + tl.sum(l_p[:, :, None] * w, 1)
        acc = acc * alpha + tl.sum(a_p * w, 1)
        m_run = m_new
    out = acc * v_scale / tl.where(l_run > 0, l_run, 1.0)
    tl.store(
        out_ptr + seq * stride_os + heads[:, None] * stride_oh + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=g_mask[:, None] & d_mask[None, :],
    )


@triton.jit
def _decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    out_ptr,
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    count_ptr,
    qk_scale,  # softmax scale * K scale * log2(e): the kernel works in base 2
    v_scale,
    window,  # 0 = no sliding window
    num_kv_heads,
    min_partition,  # shortest partition, doubled until the grid's partitions cover the sequence
    unsplit_upto,  # sequences at most this long are one partition
    stride_qs,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_bt,
    stride_os,
    stride_oh,
    stride_as,
    stride_ah,
    stride_ap,
    stride_ms,
    stride_mh,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
    MERGE_G: tl.constexpr,
    BLOCK_P: tl.constexpr,
    IEEE: tl.constexpr,
    FP16_OPERANDS: tl.constexpr,
    MERGE_IN_LAUNCH: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_entry(PDL)
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    part = tl.program_id(2)
    length = tl.load(seq_lens_ptr + seq)
    partition = tl.maximum(length, 1)
    n_parts = 1
    if SPLIT:
        partition, n_parts = _sequence_split(
            length, min_partition, unsplit_upto, tl.num_programs(2)
        )
        if (part > 0) & (part >= n_parts):
            return  # not one of this sequence's partitions (part 0 writes a padding row's zeros)
    part_start = part * partition
    lo = tl.where(window > 0, tl.maximum(part_start, length - window), part_start)
    hi = tl.minimum(part_start + partition, length)

    offs_g = tl.arange(0, BLOCK_G)
    g_mask = offs_g < GROUP
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    heads = kvh * GROUP + offs_g  # [BLOCK_G] query heads of this kv head
    q = tl.load(
        q_ptr + seq * stride_qs + heads[:, None] * stride_qh + offs_d[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # [BLOCK_G, BLOCK_D]
    if FP16_OPERANDS:
        # fp8 caches: e4m3 -> fp16 is one conversion instruction (-> bf16 takes several), and
        # bf16 queries are exact in fp16 at attention magnitudes; tl.dot then runs in fp16.
        q = q.to(tl.float16)

    m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    kv_head = kvh * stride_kh
    for n0 in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = (offs_n >= lo) & (offs_n < hi)
        k, v = load_kv_block(
            k_cache_ptr,
            v_cache_ptr,
            table,
            offs_n,
            n_mask,
            offs_d,
            d_mask,
            kv_head,
            stride_kb,
            stride_kt,
            q.dtype,
            PAGE,
        )  # [BLOCK_N, BLOCK_D] each
        s = scores(q, k, IEEE)
        s = tl.where(n_mask[None, :], s * qk_scale, float("-inf"))  # [BLOCK_G, BLOCK_N]
        m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, IEEE)

    out_mask = g_mask[:, None] & d_mask[None, :]
    if n_parts > 1:
        ml = seq * stride_ms + heads * stride_mh + part  # [BLOCK_G]
        partial = part_acc_ptr + seq * stride_as + heads[:, None] * stride_ah + part * stride_ap
        tl.store(partial + offs_d[None, :], acc, mask=out_mask)
        tl.store(part_m_ptr + ml, m_i, mask=g_mask)
        tl.store(part_l_ptr + ml, l_i, mask=g_mask)
        if MERGE_IN_LAUNCH:  # else _merge_kernel, launched next, merges
            tl.debug_barrier()  # every thread's partial is stored before the release below
            counter = count_ptr + seq * num_kv_heads + kvh
            if tl.atomic_add(counter, 1, sem="acq_rel") == n_parts - 1:
                # Every partition of this (sequence, kv head) has arrived: nobody else reads the
                # counter in this launch, so re-arm it for the next.
                tl.atomic_xchg(counter, 0)
                tl.debug_barrier()
                _merge_partials(
                    part_acc_ptr,
                    part_m_ptr,
                    part_l_ptr,
                    out_ptr,
                    seq,
                    kvh,
                    n_parts,
                    v_scale,
                    stride_as,
                    stride_ah,
                    stride_ap,
                    stride_ms,
                    stride_mh,
                    stride_os,
                    stride_oh,
                    GROUP,
                    MERGE_G,
                    BLOCK_D,
                    HEAD_DIM,
                    BLOCK_P,
                )
    else:
        out = acc * v_scale / tl.where(l_i > 0, l_i, 1.0)[:, None]  # length 0: zeros
        o = out_ptr + seq * stride_os + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o, out.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _merge_kernel(
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    seq_lens_ptr,
    out_ptr,
    min_partition,
    unsplit_upto,
    num_parts,
    v_scale,
    stride_as,
    stride_ah,
    stride_ap,
    stride_ms,
    stride_mh,
    stride_os,
    stride_oh,
    GROUP: tl.constexpr,
    MERGE_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PDL: tl.constexpr,
):
    """The merge as a second launch (``merge_in_launch=False``): one program per (sequence, kv
    head) whose sequence was split; the others' outputs are already written."""
    pdl_entry(PDL)
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    length = tl.load(seq_lens_ptr + seq)
    _, n_parts = _sequence_split(length, min_partition, unsplit_upto, num_parts)
    if n_parts > 1:
        _merge_partials(
            part_acc_ptr,
            part_m_ptr,
            part_l_ptr,
            out_ptr,
            seq,
            kvh,
            n_parts,
            v_scale,
            stride_as,
            stride_ah,
            stride_ap,
            stride_ms,
            stride_mh,
            stride_os,
            stride_oh,
            GROUP,
            MERGE_G,
            BLOCK_D,
            HEAD_DIM,
            BLOCK_P,
        )


@dataclass(frozen=True, slots=True)
class Split:
    """How a launch splits each sequence's context (from static shapes; the kernel applies it
    per sequence): ``num_parts`` programs per (sequence, kv head); a sequence longer than
    ``unsplit_upto`` tokens gets the shortest power-of-two multiple of ``min_partition`` tokens
    that ``num_parts`` partitions cover it with, a shorter one a single partition."""

    min_partition: int
    num_parts: int
    unsplit_upto: int


def choose_split(
    num_seqs: int, num_kv_heads: int, max_context: int, block_n: int, num_sms: int
) -> Split:
    """The split of a grid of ``num_seqs x num_kv_heads`` programs over contexts up to
    ``max_context`` tokens: none for grids of ``NO_SPLIT_PROGRAMS_PER_SM`` programs per SM;
    otherwise up to ``SPLIT_PROGRAMS_PER_SM`` programs per SM (at most ``MAX_PARTITIONS`` per
    sequence) of at least ``MIN_PARTITION`` tokens, more for larger grids."""
    programs = num_seqs * num_kv_heads
    if programs >= NO_SPLIT_PROGRAMS_PER_SM * num_sms:
        return Split(max(max_context, block_n), 1, max_context)
    grid_factor = triton.next_power_of_2(-(-programs // PROGRAMS_PER_MIN_PARTITION))
    min_partition = max(MIN_PARTITION * grid_factor, block_n)
    parts = min(
        MAX_PARTITIONS,
        -(-SPLIT_PROGRAMS_PER_SM * num_sms // programs),
        -(-max_context // min_partition),
    )
    return Split(min_partition, max(parts, 1), UNSPLIT_PARTITIONS * min_partition)


def fixed_split(partition: int, max_context: int) -> Split:
    """Every sequence in ``partition``-token partitions (the benchmark's and tests' knob)."""
    return Split(partition, triton.cdiv(max_context, partition), 0)


def partition_of(length: int, split: Split) -> int:
    """The partition the kernel gives a sequence of ``length`` tokens (mirrors its arithmetic)."""
    if split.num_parts == 1 or length <= split.unsplit_upto:
        return max(length, 1)
    size = split.min_partition
    while size * split.num_parts < length:
        size *= 2
    return size


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    *,
    block_n: int = 64,
    partition: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
    merge_in_launch: bool | None = None,
) -> torch.Tensor:
    """Triton version of ``reference.paged_decode_attention_ref`` (same arguments).

    ``block_n``, ``partition``, ``num_warps``, ``num_stages`` and ``merge_in_launch`` (merge a
    split sequence's partials in the same launch, or in a second one; by default in a second
    one for at most ``TWO_LAUNCH_MAX_SEQS`` sequences) are tuning knobs (benchmarks).
    """
    num_seqs, num_q_heads, head_dim = q.shape
    _, page, num_kv_heads, _ = k_cache.shape
    out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or k_cache.stride() != v_cache.stride():
        raise ValueError("q and the caches must be contiguous in head_dim, caches alike")
    group = num_q_heads // num_kv_heads
    max_context = block_tables.shape[1] * page
    if partition is None:
        plan = choose_split(num_seqs, num_kv_heads, max_context, block_n, num_sms(q.device))
    else:
        plan = fixed_split(partition, max_context)
    num_parts = plan.num_parts
    split = num_parts > 1
    if merge_in_launch is None:
        merge_in_launch = num_seqs > TWO_LAUNCH_MAX_SEQS
    merge_g = triton.next_power_of_2(group)
    merge_p = max(1, MERGE_ROWS // merge_g)
    pdl, launch = launch_options(q.device)
    # Passed even when nothing splits: Triton compiles the merge branch for the pointer's dtype.
    counters = split_counters(q.device)
    if num_seqs * num_kv_heads > counters.numel():
        raise ValueError(f"{num_seqs} sequences x {num_kv_heads} kv heads exceed the counters")
    if split:
        # [num_seqs, num_q_heads, num_parts, head_dim] partials; max and sum per row.
        part_acc = torch.empty(
            num_seqs, num_q_heads, num_parts, head_dim, dtype=torch.float32, device=q.device
        )
        part_m = torch.empty(num_seqs, num_q_heads, num_parts, dtype=torch.float32, device=q.device)
        part_l = torch.empty_like(part_m)
        a_strides = (part_acc.stride(0), part_acc.stride(1), part_acc.stride(2))
        m_strides = (part_m.stride(0), part_m.stride(1))
    else:
        part_acc = part_m = part_l = out  # unused: no partition writes a partial
        a_strides, m_strides = (0, 0, 0), (0, 0)
    _decode_kernel[(num_seqs, num_kv_heads, num_parts)](
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        out,
        part_acc,
        part_m,
        part_l,
        counters,
        scale * k_scale * LOG2E,
        v_scale,
        sliding_window or 0,
        num_kv_heads,
        plan.min_partition,
        plan.unsplit_upto,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        *a_strides,
        *m_strides,
        GROUP=group,
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim),
        PAGE=page,
        BLOCK_N=block_n,
        SPLIT=split,
        MERGE_G=merge_g,
        BLOCK_P=merge_p,
        IEEE=q.dtype == torch.float32,
        FP16_OPERANDS=q.dtype == torch.bfloat16 and k_cache.element_size() == 1,
        MERGE_IN_LAUNCH=merge_in_launch,
        PDL=pdl,
        num_warps=num_warps,
        num_stages=num_stages,
        **launch,
    )
    if split and not merge_in_launch:
        _merge_kernel[(num_seqs, num_kv_heads)](
            part_acc,
            part_m,
            part_l,
            seq_lens,
            out,
            plan.min_partition,
            plan.unsplit_upto,
            num_parts,
            v_scale,
            *a_strides,
            *m_strides,
            out.stride(0),
            out.stride(1),
            GROUP=group,
            MERGE_G=merge_g,
            BLOCK_D=triton.next_power_of_2(head_dim),
            HEAD_DIM=head_dim,
            BLOCK_P=merge_p,
            PDL=pdl,
            **launch,
        )
    return out
