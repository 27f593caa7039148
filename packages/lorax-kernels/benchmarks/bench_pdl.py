"""Programmatic dependent launch (``lorax_kernels.pdl``) on the decode GEMV chain: one token
through 32 layers of Llama-3-8B projections (qkv, o, gate_up, down), each layer's four GEMVs back
to back in a CUDA graph, per layer µs and share of copy bandwidth for the weight bytes.

Variants: cuBLAS (``F.linear``, bf16 only), our GEMV (``fp8_gemv``'s kernel, which also takes
bf16 weights: ``dense_gemv``; for 4-bit weights, GPTQ layout with group 128, ``w4a16_matmul``'s
few-rows kernel), and our GEMV launched with PDL, as the engine launches it on Hopper. The PDL
chain's outputs are checked bit for bit against the plain chain. (Prefetching each program's
weight into L2 before its wait did not pay: its whole slice, run 5, made the chain 36% slower;
its first one or two tiles, run 6, 1.5-5% slower.)

    PYTHONPATH=packages/lorax-kernels/src python3 packages/lorax-kernels/benchmarks/bench_pdl.py \
        [--formats bf16,fp8,w4]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import copy_bandwidth_gbs, markdown_table, time_graph_us

from lorax_kernels import pdl as pdl_launches
from lorax_kernels.fp8_gemv import FP8
from lorax_kernels.fp8_gemv.triton import fp8_gemv
from lorax_kernels.w4a16.triton import w4a16_matmul

LAYERS = 32
W4_GROUP = 128
# (out_features, in_features) of Llama-3-8B's fused projections.
PROJECTIONS = {
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
}


class Chain:
    """32 layers of weights of one format (bf16, fp8 or 4-bit ``w4``), and one token's inputs
    (the GEMVs' x do not chain: the data dependency does not change what PDL may overlap, the
    stream order does)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.layers: list[list[tuple[torch.Tensor, ...]]] = []
        for _ in range(LAYERS):
            self.layers.append([self._weight(n, k) for n, k in PROJECTIONS.values()])
        self.layer_bytes = sum(
            t.numel() * t.element_size() for weight in self.layers[0] for t in weight
        )
        self.x = {k: torch.randn(1, k, device="cuda", dtype=torch.bfloat16) for k in (4096, 14336)}

    def _weight(self, n: int, k: int) -> tuple[torch.Tensor, ...]:
        """One projection's tensors: (weight,) in bf16, (weight, scale) in fp8, (qweight,
        scales, zeros) in 4 bits."""
        if self.fmt == "w4":
            groups = k // W4_GROUP
            qweight = torch.randint(
                -(2**31), 2**31 - 1, (k // 8, n), device="cuda", dtype=torch.int32
            )
            scales = torch.rand(groups, n, device="cuda", dtype=torch.bfloat16) / 64
            return qweight, scales, torch.full_like(scales, 8.0)
        w = torch.randn(n, k, device="cuda") / 64
        if self.fmt == "fp8":
            return w.to(FP8), torch.ones(n, device="cuda")
        return (w.to(torch.bfloat16),)

    def gemv(self, layer: int, pdl: bool) -> list[torch.Tensor]:
        if self.fmt != "w4":
            return [
                fp8_gemv(self.x[w[0].shape[1]], w[0], w[1] if len(w) > 1 else None, None, pdl=pdl)
                for w in self.layers[layer]
            ]
        previous = pdl_launches.enabled()
        pdl_launches.set_enabled(pdl)  # w4a16_matmul launches as the module says
        try:
            return [
                w4a16_matmul(self.x[qweight.shape[0] * 8], qweight, scales, zeros, None, W4_GROUP)
                for qweight, scales, zeros in self.layers[layer]
            ]
        finally:
            pdl_launches.set_enabled(previous)

    def cublas(self, layer: int) -> list[torch.Tensor]:
        return [F.linear(self.x[w[0].shape[1]], w[0]) for w in self.layers[layer]]


def _per_layer_us(chain: Chain, step: Callable[[int], object]) -> float:
    return time_graph_us([lambda i=i: step(i) for i in range(LAYERS)])


def run(copy_gbs: float, formats: list[str]) -> str:
    """Per layer µs of each variant, for each of the weight ``formats`` (bf16, fp8, w4)."""
    rows = []
    exact_by_dtype = []
    for name in formats:
        chain = Chain(name)
        variants: list[tuple[str, Callable[[int], object]]] = []
        if name == "bf16":
            variants.append(("cuBLAS", chain.cublas))
        variants.append(("GEMV", lambda i, c=chain: c.gemv(i, pdl=False)))
        plain = [y.clone() for i in range(LAYERS) for y in chain.gemv(i, pdl=False)]
        variants.append(("GEMV + PDL", lambda i, c=chain: c.gemv(i, pdl=True)))
        overlapped = _graph_outputs(chain)
        exact = all(torch.equal(a, b) for a, b in zip(plain, overlapped, strict=True))
        exact_by_dtype.append(f"{name}: {'yes' if exact else 'NO'}")
        for label, step in variants:
            us = _per_layer_us(chain, step)
            rows.append([name, label, us, 100 * chain.layer_bytes / us / 1e3 / copy_gbs])
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="bf16,fp8,w4", help="weight formats: bf16, fp8, w4")
    formats = ap.parse_args().formats.split(",")
    if unknown := set(formats) - {"bf16", "fp8", "w4"}:
        ap.error(f"unknown formats: {sorted(unknown)}")
    print(run(copy_bandwidth_gbs(), formats))
