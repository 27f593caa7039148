"""Device facts the kernel launchers size their grids by."""

from __future__ import annotations

import functools

import torch
import triton


@functools.cache
def num_sms(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (132 on an H100/H200, assumed for the interpreter)."""
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


# Arrival counters of split kernels (split-K GEMVs: one per output tile; decode attention: one per
# sequence and kv head). The last program of a tile to arrive sets its counter back to 0, so the
# buffer is zeroed once per device and never again: no memset launch per call, and a CUDA graph
# replays with the counters as it found them.
SPLIT_COUNTERS = 1 << 16
_counters: dict[torch.device, torch.Tensor] = {}


def split_counters(device: torch.device) -> torch.Tensor:
    """The device's ``[SPLIT_COUNTERS]`` int32 arrival counters, all 0 between launches.

    Kernels on one stream may share them (each launch leaves them at 0 when it ends). The first
    call allocates them; make it before a CUDA graph capture (a warm-up run does).
    """
    buf = _counters.get(device)
    if buf is None:
        buf = _counters[device] = torch.zeros(SPLIT_COUNTERS, device=device, dtype=torch.int32)
    return buf


def split_k(
    k: int, block_k: int, tiles_n: int, waves: int, device: torch.device
) -> tuple[int, int]:
    """``(splits, k_per_split)`` of a split-K GEMV over ``k`` inputs in ``block_k`` steps: K split
    until about ``waves`` programs per SM stream the weight (``tiles_n`` column tiles each), each
    split whole ``block_k`` steps, none empty."""
    steps = triton.cdiv(k, block_k)
    splits = max(1, min(steps, waves * num_sms(device) // tiles_n))
    k_per_split = triton.cdiv(steps, splits) * block_k
    return triton.cdiv(k, k_per_split), k_per_split
