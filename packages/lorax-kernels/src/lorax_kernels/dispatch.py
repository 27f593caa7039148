"""Eager calls of the ops go straight to their CUDA implementation, not through the dispatcher.

Every op is a ``torch.library`` custom op with a fake implementation, so ``torch.compile`` can
trace it. Called eagerly, the custom op's Python dispatch costs host time on every call (schema
binding, the mutation and aliasing checks, the redispatch), in eager steps whose host time is
their critical path: a prefill or mixed step launches about ten ops a layer, more with adapters
(H200, run 9: a mixed step of 128 decodes and a 256-token prompt took 19-26 ms of host time for
20 ms of GPU time on the base model). On CUDA outside a ``torch.compile`` trace, :func:`call`
runs the op's registered CUDA implementation directly: the same function the dispatcher would
reach, the same launches. Elsewhere (CPU references, fake tensors) it goes through the op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

R = TypeVar("R")


def call(op: Callable[..., R], cuda_impl: Callable[..., R], *args: Any) -> R:
    """``op(*args)``, or ``cuda_impl(*args)`` directly when the first argument (a tensor of the
    op's device) is on CUDA and no ``torch.compile`` trace is running."""
    if args[0].is_cuda and not torch.compiler.is_compiling():
        return cuda_impl(*args)
    return op(*args)
