"""Device facts the kernel launchers size their grids by."""

from __future__ import annotations

import functools

import torch


@functools.cache
def num_sms(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (132 on an H100/H200, assumed for the interpreter)."""
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count
