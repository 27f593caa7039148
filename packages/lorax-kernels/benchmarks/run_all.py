"""Runs every kernel benchmark in one process and prints markdown tables (for docs/benchmarks.md).

Usage (on the GPU machine, from the repository root):
    PYTHONPATH=packages/lorax-kernels/src python3 packages/lorax-kernels/benchmarks/run_all.py
Optional arguments name a subset: decode prefill sgmv side cache fused greedy quant pdl; ``--no-pdl``
launches every kernel plainly (by default the decode kernels are PDL-launched on Hopper, as in the
engine, so a kernel timed back to back overlaps its own next call).
"""

from __future__ import annotations

import functools
import sys
import time

import bench_decode_attention
import bench_fused
import bench_greedy
import bench_lora_side_stream
import bench_pdl
import bench_prefill_attention
import bench_quant_gemv
import bench_reshape_and_cache
import bench_sgmv
import torch
import triton
from common import copy_bandwidth_gbs, matmul_tflops

from lorax_kernels import pdl


def main() -> None:
    """Measure the ceilings, then each op; print everything as markdown."""
    args = set(sys.argv[1:])
    pdl.set_enabled("--no-pdl" not in args)
    which = (args - {"--no-pdl"}) or {
        "decode",
        "prefill",
        "sgmv",
        "side",
        "cache",
        "fused",
        "greedy",
        "quant",
        "pdl",
    }
    props = torch.cuda.get_device_properties(0)
    copy_gbs = copy_bandwidth_gbs()
    mm = matmul_tflops()
    print(
        f"GPU: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, "
        f"triton {triton.__version__}; PDL launches {'on' if '--no-pdl' not in args else 'off'}"
    )
    print(
        f"Measured copy bandwidth (read + write): {copy_gbs:.0f} GB/s; "
        f"bf16 8192³ matmul: {mm:.0f} TFLOP/s\n",
        flush=True,
    )
    for name, fn, arg in [
        ("decode", bench_decode_attention.run, copy_gbs),
        ("sgmv", bench_sgmv.run, copy_gbs),
        ("side", bench_lora_side_stream.run, copy_gbs),
        ("prefill", functools.partial(bench_prefill_attention.run, copy_gbps=copy_gbs), mm),
        ("cache", bench_reshape_and_cache.run, copy_gbs),
        ("fused", bench_fused.run, copy_gbs),
        ("greedy", bench_greedy.run, copy_gbs),
        ("quant", bench_quant_gemv.run, copy_gbs),
        ("pdl", bench_pdl.run, copy_gbs),
    ]:
        if name in which:
            t0 = time.time()
            print(fn(arg), flush=True)
            print(f"\n({name}: {time.time() - t0:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main()
