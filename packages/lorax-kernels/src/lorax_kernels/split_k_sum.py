"""The last-arrival sum of a split-K kernel's partials, in the launch (no second kernel).

A split-K GEMV splits the K loop of each output tile over several programs. Each stores its fp32
partial and counts itself in on the tile's arrival counter (``device.split_counters``); the last
program to arrive sums the partials in split order — a fixed order, so the result is the same
bits whichever program finishes last — and re-arms the counter, so the buffer needs no memset
and a CUDA graph replays with the counters as it found them.
"""

# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def arrived_last(counter_ptr, num_splits):
    """Count this program in at ``counter_ptr`` once every thread has stored its partials; whether
    it arrived last. The last one then (after a barrier) sums every split's partial in a fixed
    order and sets the counter back to 0."""
    tl.debug_barrier()  # every thread's partial is stored before the release below
    return tl.atomic_add(counter_ptr, 1, sem="acq_rel") == num_splits - 1


@triton.jit
def last_split_total(partial, part_ptrs, split_stride, split, num_splits, counter_ptr, mask):
    """Store this program's ``partial`` (fp32, the tile's shape) at ``part_ptrs + split *
    split_stride`` and count it in at ``counter_ptr``. Returns ``(last, total)``: whether this
    program arrived last, and then the sum of every split's partial in split order (zeros
    otherwise)."""
    tl.store(part_ptrs + split * split_stride, partial, mask=mask)
    last = arrived_last(counter_ptr, num_splits)
    total = tl.zeros_like(partial)
    if last:
        tl.debug_barrier()
        for i in range(num_splits):  # fixed order; .cg reads L2, where the other SMs wrote
            total += tl.load(
                part_ptrs + i * split_stride, mask=mask, other=0.0, cache_modifier=".cg"
            )
        tl.atomic_xchg(counter_ptr, 0)  # re-armed for the next launch
    return last, total
