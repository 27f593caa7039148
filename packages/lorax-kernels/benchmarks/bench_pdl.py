"""Programmatic dependent launch (``lorax_kernels.pdl``) on the decode GEMV chain: one token
through 32 layers of Llama-3-8B projections (qkv, o, gate_up, down), each layer's four GEMVs back
to back in a CUDA graph, per layer µs and share of copy bandwidth for the weight bytes.

Variants: cuBLAS (``F.linear``, bf16 only), our GEMV (``fp8_gemv``'s kernel, which also takes
bf16 weights: ``dense_gemv``), and our GEMV launched with PDL, as the engine launches it on
Hopper. The PDL chain's outputs are checked bit for bit against the plain chain. (Prefetching
each program's weight into L2 before its wait did not pay: its whole slice, run 5, made the chain
36% slower; its first one or two tiles, run 6, 1.5-5% slower.)

    PYTHONPATH=packages/lorax-kernels/src python3 packages/lorax-kernels/benchmarks/bench_pdl.py
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import copy_bandwidth_gbs, markdown_table, time_graph_us

from lorax_kernels.fp8_gemv import FP8
from lorax_kernels.fp8_gemv.triton import fp8_gemv

LAYERS = 32
# (out_features, in_features) of Llama-3-8B's fused projections.
PROJECTIONS = {
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
}


class Chain:
    """32 layers of weights of one dtype, and one token's inputs (the GEMVs' x do not chain:
    the data dependency does not change what PDL may overlap, the stream order does)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.layers = []
        for _ in range(LAYERS):
            layer: list[tuple[torch.Tensor, torch.Tensor | None]] = []
            for n, k in PROJECTIONS.values():
                w = (torch.randn(n, k, device="cuda") / 64).to(dtype)
                layer.append((w, torch.ones(n, device="cuda") if dtype == FP8 else None))
            self.layers.append(layer)
        self.x = {k: torch.randn(1, k, device="cuda", dtype=torch.bfloat16) for k in (4096, 14336)}

    def weight_bytes(self) -> int:
        """Bytes of one layer's weights."""
        return sum(w.numel() * w.element_size() for w, _ in self.layers[0])

    def gemv(self, layer: int, pdl: bool) -> list[torch.Tensor]:
        return [
            fp8_gemv(self.x[w.shape[1]], w, scale, None, pdl=pdl) for w, scale in self.layers[layer]
        ]

    def cublas(self, layer: int) -> list[torch.Tensor]:
        return [F.linear(self.x[w.shape[1]], w) for w, _ in self.layers[layer]]


def _per_layer_us(chain: Chain, step: Callable[[int], object]) -> float:
    return time_graph_us([lambda i=i: step(i) for i in range(LAYERS)])


def run(copy_gbs: float) -> str:
    """Per layer µs of each variant, for bf16 and fp8 weights."""
    rows = []
    exact_by_dtype = []
    for name, dtype in (("bf16", torch.bfloat16), ("fp8", FP8)):
        chain = Chain(dtype)
        variants: list[tuple[str, Callable[[int], object]]] = []
        if dtype == torch.bfloat16:
            variants.append(("cuBLAS", chain.cublas))
        variants.append(("GEMV", lambda i, c=chain: c.gemv(i, pdl=False)))
        plain = [y.clone() for i in range(LAYERS) for y in chain.gemv(i, pdl=False)]
        variants.append(("GEMV + PDL", lambda i, c=chain: c.gemv(i, pdl=True)))
        overlapped = _graph_outputs(chain)
        exact = all(torch.equal(a, b) for a, b in zip(plain, overlapped, strict=True))
        exact_by_dtype.append(f"{name}: {'yes' if exact else 'NO'}")
        for label, step in variants:
            us = _per_layer_us(chain, step)
            rows.append([name, label, us, 100 * chain.weight_bytes() / us / 1e3 / copy_gbs])
        del chain
        torch.cuda.empty_cache()
    out = f"### Decode GEMV chain, {LAYERS} layers × (qkv, o, gate_up, down), one token\n\n"
    out += markdown_table(["weights", "variant", "µs per layer", "% of copy BW"], rows)
    return (
        out
        + "\n\nPDL chain's outputs bit-identical to the plain chain's: "
        + ", ".join(exact_by_dtype)
    )


def _graph_outputs(chain: Chain) -> list[torch.Tensor]:
    """Every GEMV output of the PDL chain, captured in a CUDA graph and replayed."""
    for i in range(LAYERS):  # compile outside the capture
        chain.gemv(i, pdl=True)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [y for i in range(LAYERS) for y in chain.gemv(i, pdl=True)]
    graph.replay()
    torch.cuda.synchronize()
    return outs


if __name__ == "__main__":
    print(run(copy_bandwidth_gbs()))
