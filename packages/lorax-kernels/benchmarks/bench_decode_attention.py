"""Paged decode attention at Llama-3-8B shapes (32 q / 8 kv heads, head dim 128), bf16 q, block 16,
over bf16 or fp8 (e4m3) KV caches.

Bytes counted: every K and V row of every sequence read once (at the cache's element size), q read
and out written once. Each captured call gets its own block tables over a cache pool of at least
1 GiB, so small configurations do not find their KV in L2.

Standalone (on the GPU machine, from the repository root):
    PYTHONPATH=packages/lorax-kernels/src python3 packages/lorax-kernels/benchmarks/\
bench_decode_attention.py [--kv-dtype bf16,fp8] [--no-partition-sweep] [--config-sweep]
prints the batch x context grid per KV dtype, then the partition sweep at batch 1 and 16 (what
``choose_split``'s constants are picked from), then optionally the block/warp/stage sweep.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import triton
from common import copy_bandwidth_gbs, markdown_table, time_graph_us

from lorax_kernels.decode_attention import triton as decode_triton
from lorax_kernels.device import num_sms
from lorax_kernels.kv_cache import FP8_KV_DTYPE

Q_HEADS, KV_HEADS, HEAD_DIM, PAGE = 32, 8, 128, 16
DT = torch.bfloat16
KV_DTYPES = {"bf16": torch.bfloat16, "fp8": FP8_KV_DTYPE}
BATCHES = (1, 16, 64, 256)
CONTEXTS = (128, 512, 1024, 4096, 16384)
# Partition sizes the sweep tries at small batches (None: choose_split's pick).
SWEEP_BATCHES = (1, 16)
SWEEP_PARTITIONS = (None, 64, 128, 256, 512, 1024, 2048)


def measure(
    batch: int, ctx: int, knob_sets: list[dict[str, Any]], kv_dtype: torch.dtype = DT
) -> tuple[list[float], int]:
    """µs per call for each knob set (``{}`` = the defaults), and the bytes one call must read."""
    blocks_per_seq = ctx // PAGE
    needed = batch * blocks_per_seq
    itemsize = torch.empty((), dtype=kv_dtype).element_size()
    block_bytes = PAGE * KV_HEADS * HEAD_DIM * itemsize
    pool = max(needed, (1 << 30) // block_bytes)
    rotations = max(1, min(8, pool // needed))
    k_cache = torch.randn(pool, PAGE, KV_HEADS, HEAD_DIM, device="cuda", dtype=DT).to(kv_dtype)
    v_cache = torch.randn(pool, PAGE, KV_HEADS, HEAD_DIM, device="cuda", dtype=DT).to(kv_dtype)
    tables = [
        torch.randperm(pool, device="cuda")[:needed].view(batch, blocks_per_seq).int()
        for _ in range(rotations)
    ]
    q = torch.randn(batch, Q_HEADS, HEAD_DIM, device="cuda", dtype=DT)
    lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    nbytes = 2 * batch * ctx * KV_HEADS * HEAD_DIM * itemsize + 2 * q.numel() * 2
    times = []
    for knobs in knob_sets:
        calls = [
            lambda t=t, kn=knobs: decode_triton.paged_decode_attention(
                q, k_cache, v_cache, t, lens, HEAD_DIM**-0.5, **kn
            )
            for t in tables
        ]
        times.append(time_graph_us(calls * max(1, 16 // len(calls))))
    return times, nbytes


def grid_table(copy_gbs: float, kv_names: list[str]) -> str:
    """µs, GB/s and % of copy bandwidth over batch x context, one row per KV dtype."""
    rows = []
    base: dict[tuple[int, int], float] = {}
    for batch in BATCHES:
        for ctx in CONTEXTS:
            for name in kv_names:
                (us,), nbytes = measure(batch, ctx, [{}], KV_DTYPES[name])
                torch.cuda.empty_cache()
                base.setdefault((batch, ctx), us)
                gbs = nbytes / us / 1e3
                speedup = base[(batch, ctx)] / us
                rows.append([batch, ctx, name, us, gbs, 100 * gbs / copy_gbs, speedup])
    out = "### Paged decode attention (bf16 q, 32 q / 8 kv heads, d 128, block 16)\n\n"
    out += f"Speed-up: against the first KV dtype listed ({kv_names[0]}).\n\n"
    return out + markdown_table(
        ["batch", "context", "KV", "µs/call", "GB/s", "% of copy BW", "speed-up"], rows
    )


def partition_sweep(kv_names: list[str]) -> str:
    """µs per partition size at the small batches, with the auto pick and the fastest marked."""
    sms = num_sms(torch.device("cuda"))
    rows = []
    for name in kv_names:
        for batch in SWEEP_BATCHES:
            for ctx in CONTEXTS:
                parts = [p for p in SWEEP_PARTITIONS if p is None or p < ctx] + [ctx]
                # Merged in the launch (the default picks a second launch at batch 1) ...
                knobs: list[dict[str, Any]] = [
                    {"partition": p, "merge_in_launch": True} for p in parts
                ]
                # ... and last, the automatic split with its partials merged by a second launch.
                knobs.append({"merge_in_launch": False})
                times, _ = measure(batch, ctx, knobs, KV_DTYPES[name])
                two_launch_us = times.pop()
                torch.cuda.empty_cache()
                plan = decode_triton.choose_split(batch, KV_HEADS, ctx, 64, sms)
                auto = decode_triton.partition_of(ctx, plan)
                best = min(range(len(parts)), key=lambda i: times[i])
                cells = [f"{us:.2f}" + (" *" if i == best else "") for i, us in enumerate(times)]
                rows.append(
                    [
                        name,
                        batch,
                        ctx,
                        auto,
                        parts[best] or auto,
                        times[0] / times[best],
                        f"{two_launch_us:.2f}",
                        *cells,
                    ]
                )
    header = ["KV", "batch", "context", "auto", "best", "auto / best", "auto, 2 launches µs"]
    header += ["auto, in launch µs"] + [f"p{p}" for p in SWEEP_PARTITIONS[1:]] + ["unsplit"]
    width = len(header)
    # Rows with fewer partition sizes (short contexts) put "unsplit" in the last column.
    rows = [r[:-1] + ["-"] * (width - len(r)) + r[-1:] for r in rows]
    out = (
        "Partition sweep (µs per call; * = fastest; unsplit = one partition per sequence; "
        "2 launches: the automatic split merged by a second kernel instead of in the launch):\n\n"
    )
    return out + markdown_table(header, rows)


def config_sweep(copy_gbs: float) -> str:
    """block_n x warps x stages x partition at the goal point (batch 64, context 1k), bf16."""
    knob_sets = [
        {"block_n": bn, "num_warps": w, "num_stages": s, "partition": p}
        for bn in (32, 64, 128)
        for w in (4, 8)
        for s in (2, 3)
        for p in (None, 1024)
    ]
    times, nbytes = measure(64, 1024, knob_sets)
    sweep = []
    for knobs, us in zip(knob_sets, times, strict=True):
        gbs = nbytes / us / 1e3
        sweep.append([*[knobs[k] or "auto" for k in knobs], us, gbs, 100 * gbs / copy_gbs])
    out = "Config sweep at batch 64, context 1024:\n\n"
    return out + markdown_table(
        ["block_n", "warps", "stages", "partition", "µs/call", "GB/s", "% of copy BW"], sweep
    )


def run(
    copy_gbs: float,
    kv_names: list[str] | None = None,
    partitions: bool = True,
    configs: bool = False,
) -> str:
    """The batch x context grid per KV dtype, the partition sweep, and the config sweep."""
    kv_names = kv_names or list(KV_DTYPES)
    out = grid_table(copy_gbs, kv_names)
    if partitions:
        out += "\n\n" + partition_sweep(kv_names)
    if configs:
        out += "\n\n" + config_sweep(copy_gbs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--kv-dtype", default="bf16,fp8", help="comma-separated: bf16, fp8")
    ap.add_argument("--no-partition-sweep", action="store_true")
    ap.add_argument("--config-sweep", action="store_true")
    args = ap.parse_args()
    kv_names = [n for n in args.kv_dtype.split(",") if n]
    unknown = set(kv_names) - set(KV_DTYPES)
    if unknown:
        ap.error(f"unknown --kv-dtype {sorted(unknown)}; known: {', '.join(KV_DTYPES)}")
    props = torch.cuda.get_device_properties(0)
    copy_gbs = copy_bandwidth_gbs()
    print(
        f"GPU: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, "
        f"triton {triton.__version__}; copy bandwidth {copy_gbs:.0f} GB/s\n",
        flush=True,
    )
    print(run(copy_gbs, kv_names, not args.no_partition_sweep, args.config_sweep), flush=True)


if __name__ == "__main__":
    main()
