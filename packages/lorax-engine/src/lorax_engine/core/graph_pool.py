"""Captures the engine's CUDA graphs into one shared memory pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

Outputs = TypeVar("Outputs")


class GraphPool:
    """One memory pool for every graph the engine captures (decode and mixed steps alike).

    Sharing is safe because the graphs replay one at a time on one stream, and each graph's
    outputs stay referenced (by whoever captured it), so no later capture is handed their memory.
    """

    def __init__(self) -> None:
        self.handle = None  # the first capture's pool, then shared

    def capture(self, run: Callable[[], Outputs]) -> tuple[torch.cuda.CUDAGraph, Outputs]:
        """Capture ``run`` (which launches the work and returns its output tensors)."""
        # Warm up outside the graph so lazy initialisation (cuBLAS handles, Triton compiles) is done.
        for _ in range(2):
            run()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the adapter promoter thread may allocate or sync while a graph is
        # captured lazily; in the default global mode that would invalidate the capture.
        with torch.cuda.graph(graph, pool=self.handle, capture_error_mode="thread_local"):
            outputs = run()
        if self.handle is None:
            self.handle = graph.pool()
        return graph, outputs
