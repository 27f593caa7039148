"""Programmatic dependent launch (PDL, Hopper and later): a kernel starts before the one ahead
of it on the stream has finished.

A decode step at batch 1 is a chain of short kernels that each read a few MB of weights. Run
back to back, every kernel pays its launch, its ramp up to full bandwidth and its tail; launched
with PDL, a kernel's programs may start once every program of the previous kernel has let them
(``gdc_launch_dependents``, here right after its own wait: one kernel of look-ahead), and then
wait (``gdc_wait``) for the previous kernel to complete and its writes to become visible: the
launch and the programs' start-up overlap the kernel ahead.

On by default wherever supported (``set_enabled(False)`` for the plain launches): every kernel
of the decode step (norms, rotary, KV write, decode attention and its merge, SiLU·up, the 16-bit,
fp8 and 4-bit GEMVs, the fused LoRA kernel, the greedy choice) is launched with PDL and waits
(``pdl_entry``) before it touches anything a kernel ahead may write (first thing, but for the
4-bit few-rows kernel, which reads its first weights before), so a step is one chain in which
each kernel launches while the one ahead still runs; the engine also sends its 16-bit decode
GEMVs of one or two rows to ``dense_gemv`` instead of cuBLAS, whose kernels are not
PDL-launched. Measured on the H200 (run 6, Llama-3-8B shape, batch 1): a bf16 step 4.65 -> 4.43
ms, an fp8 one 3.04 -> 2.94 ms (run 15: a GPTQ one 2.50 -> 2.35 with its 4-bit GEMVs joining
the chain). Prefetching a GEMV's weight into L2 before the wait did not pay: a program's whole
slice made the chain 36% slower (run 5, L2 thrash), its first one or two tiles 1.5-5% slower
(run 6).

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

_enabled = True


def set_enabled(enabled: bool) -> None:
    """Launch the decode step's kernels with PDL from now on (where supported), or not (the
    benchmarks' plain A/B)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether PDL launches are on (where supported)."""
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
