"""Programmatic dependent launch (PDL, Hopper and later): a kernel starts before the one ahead
of it on the stream has finished, and fetches what does not depend on it in the meantime.

A decode step at batch 1 is a chain of short kernels that each read a few MB of weights. Run
back to back, every kernel pays its launch, its ramp up to full bandwidth and its tail; launched
with PDL, a kernel's programs may start once every program of the previous kernel has let them
(``gdc_launch_dependents``, here right after its own wait: one kernel of look-ahead), may pull
the start of their weight slice into L2, and only then wait (``gdc_wait``) for the previous kernel
to complete and its writes to become visible.

Status: an experiment, off unless ``set_enabled(True)`` (the benchmarks' ``--pdl``), used by no
engine path otherwise. Its first form (run 5, H200) prefetched every GEMV program's whole slice,
i.e. the whole next weight (up to 235 MB for a bf16 gate_up, L2 is 50 MB), and made a chain of
Llama-3-8B GEMVs 36% slower; the prefetch is now bounded to a number of leading tiles per
program, zero included (``benchmarks/bench_pdl.py``). Enabled, every kernel of the decode step
(norms, rotary, KV write, decode attention and its merge, SiLU·up, the GEMVs, the fused LoRA
kernel, the greedy choice) is launched with PDL and waits first thing (``pdl_entry``), so a step
is one chain in which each kernel launches while the one ahead still runs; the engine then also
sends its 16-bit decode GEMVs of one or two rows to ``dense_gemv`` instead of cuBLAS, whose
kernels are not PDL-launched.

The rule that keeps this safe: before ``gdc_wait`` a kernel reads only data no kernel in flight
writes (weights), and writes nothing at all. ``gdc_wait`` waits for the whole previous grid,
which itself waited for its own predecessor, so ordering holds along the chain. A kernel launched
without PDL after a PDL kernel waits for it as usual.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

# Bytes per L2 prefetch: one 128-byte cache line.
LINE_BYTES = 128
_enabled = False


def set_enabled(enabled: bool) -> None:
    """Launch the decode step's kernels with PDL from now on (where supported), or not."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether ``set_enabled(True)`` is in force (whatever the device supports)."""
    return _enabled


def launch_options(device: torch.device) -> tuple[bool, dict[str, Any]]:
    """``(PDL constexpr, launch keywords)`` for a kernel launched on ``device``: PDL when enabled
    and supported there."""
    on = _enabled and pdl_supported(device)
    return on, ({"launch_pdl": True} if on else {})


@functools.cache
def pdl_supported(device: torch.device) -> bool:
    """Whether kernels on ``device`` may be launched with PDL: a Hopper or later CUDA GPU, not
    Triton's interpreter (which has no grid dependency control)."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


@triton.jit
def pdl_entry(enabled: tl.constexpr):
    """A PDL-launched kernel's first statement: wait for the kernel ahead to complete, then let
    the next one launch (one kernel of look-ahead). Nothing at all unless ``enabled``."""
    if enabled:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def prefetch_l2(ptrs):
    """Start loading the cache line of every pointer in ``ptrs`` into L2 (no result, no wait).
    Give one pointer per 128-byte line: each is one instruction."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1]; mov.u32 $0, 0;",
        "=r,l",
        [ptrs],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )
