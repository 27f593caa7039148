"""Multi-LoRA shrink+expand for one 4096->4096 projection, bf16, against reading the adapters;
then every projection of one Llama-3-8B layer (fused q/k/v and gate/up) at a decode point, with
bf16 and with float8 e4m3 slot tables (the engine's ``--lora-dtype fp8``).

Two paths: ``lora_apply_`` (what the engine calls: the fused one-launch kernel or its per-token
form up to ``DECODE_MAX_ROWS`` rows, the tiles above) and the tile path alone (``lora_shrink``
then ``lora_expand_``: split-K shrink, its partial sum, expand), for comparison at every point.
The issue's goal point (64 tokens on 64 rank-16 adapters) also with and without PDL launches.

Roofline: the distinct adapters' A and B read once at the measured copy bandwidth. Each captured
call uses its own random set of slots out of a large slot table (hundreds of MB), so adapters are
mostly not in L2. Also: the base projection's matmul for the same tokens, and the per-step
``LoraBatchMeta.update_``.
"""

from __future__ import annotations

import torch
from common import markdown_table, time_graph_us

from lorax_kernels import LoraBatchMeta, lora_apply_, lora_expand_, lora_shrink, pdl
from lorax_kernels.sgmv import uses_fused_kernel
from lorax_kernels.sgmv.decode import decode_lora_
from lorax_kernels.sgmv.decode_token import loads_a_whole
from lorax_kernels.sgmv.decode_units import UNIT_ELEMENTS
from lorax_kernels.sgmv.routing import uses_token_kernel

HIDDEN, DT = 4096, torch.bfloat16


class Tables:
    """One projection's slot tables (fused slices of the given widths), every slot at one rank,
    stored in ``dtype``."""

    def __init__(
        self,
        rank: int,
        slots: int,
        in_features: int = HIDDEN,
        widths: tuple[int, ...] = (HIDDEN,),
        dtype: torch.dtype = DT,
    ) -> None:
        self.rank, self.slots, self.in_features = rank, slots, in_features
        self.offsets = [0]
        for w in widths:
            self.offsets.append(self.offsets[-1] + w)
        n = len(widths)
        self.a = (torch.randn(n, slots, rank, in_features, device="cuda") / 64).to(dtype)
        self.b = (torch.randn(n, slots, max(widths), rank, device="cuda") / 4).to(dtype)
        self.ranks = torch.full((slots,), rank, device="cuda", dtype=torch.int32)
        self.scales = torch.ones(slots, device="cuda")

    def adapter_bytes(self) -> int:
        """A and B bytes of one adapter (all slices)."""
        return (self.a[:, 0].numel() + self.rank * self.offsets[-1]) * self.a.element_size()


def measure(t: Tables, tokens: int, distinct: int) -> tuple[float, float, float]:
    """(µs lora_apply_, µs tiled shrink+expand, µs base matmul) for ``tokens`` tokens over
    ``distinct`` adapters."""
    out = t.offsets[-1]
    x = torch.randn(tokens, t.in_features, device="cuda", dtype=DT)
    y = torch.zeros(tokens, out, device="cuda", dtype=DT)
    w = torch.randn(t.in_features, out, device="cuda", dtype=DT) / 64
    metas = []
    for _ in range(8):
        chosen = torch.randperm(t.slots, device="cuda")[:distinct].int()
        token_slots = chosen.repeat_interleave(-(-tokens // distinct))[:tokens]  # scheduler order
        meta = LoraBatchMeta.allocate(tokens, t.slots, "cuda")
        meta.update_(token_slots)
        metas.append(meta)

    def tiled(m: LoraBatchMeta) -> None:
        h = lora_shrink(x, t.a, t.ranks, m)
        lora_expand_(y, h, t.b, t.ranks, t.scales, t.offsets, m)

    def apply(m: LoraBatchMeta) -> None:
        lora_apply_(y, x, t.a, t.b, t.ranks, t.scales, t.offsets, m)

    apply_us = time_graph_us([lambda m=m: apply(m) for m in metas] * 2)
    tiled_us = time_graph_us([lambda m=m: tiled(m) for m in metas] * 2)
    base_us = time_graph_us([lambda: x @ w] * 8)
    return apply_us, tiled_us, base_us


# Llama-3-8B's LoRA targets as the engine fuses them: (in_features, slice widths).
PROJECTIONS = {
    "qkv": (HIDDEN, (4096, 1024, 1024)),
    "o": (HIDDEN, (4096,)),
    "gate_up": (HIDDEN, (14336, 14336)),
    "down": (14336, (HIDDEN,)),
}


def per_layer(
    copy_gbs: float, tokens: int = 64, rank: int = 16, table_dtype: torch.dtype = DT
) -> str:
    """Every projection of one layer at a decode point: ``tokens`` tokens on as many adapters,
    the slot tables in ``table_dtype``."""
    rows = []
    totals = [0.0, 0.0, 0.0, 0.0]
    for name, (in_features, widths) in PROJECTIONS.items():
        tables = Tables(rank, 256, in_features, widths, table_dtype)
        us, tiled_us, base_us = measure(tables, tokens, tokens)
        read_us = tokens * tables.adapter_bytes() / copy_gbs / 1e3
        rows.append([name, us, tiled_us, read_us, us / read_us, base_us, us / base_us])
        for i, v in enumerate((us, tiled_us, read_us, base_us)):
            totals[i] += v
        del tables
        torch.cuda.empty_cache()
    us, tiled_us, read_us, base_us = totals
    rows.append(["layer", us, tiled_us, read_us, us / read_us, base_us, us / base_us])
    header = [
        "projection",
        "µs lora_apply_",
        "µs tiled",
        "µs to read adapters at copy BW",
        "× read time",
        "µs base matmul",
        "× base matmul",
    ]
    title = (
        f"\n\n#### One layer's projections: {tokens} tokens on {tokens} adapters, rank {rank}, "
        f"{str(table_dtype).removeprefix('torch.')} tables\n\n"
    )
    return title + markdown_table(header, rows)


# (tokens, distinct adapters, rank) points and the fused kernel's knobs the sweep times.
SWEEP_POINTS = ((1, 1, 16), (16, 8, 16), (64, 64, 16), (256, 64, 16), (64, 64, 64))
SWEEP_UNITS = (4096, 8192, 16384, 32768)
SWEEP_WARPS = (2, 4, 8)


def _time_decode(
    t: Tables,
    x: torch.Tensor,
    y: torch.Tensor,
    metas: list[LoraBatchMeta],
    unit: int,
    warps: int,
) -> float:
    """µs per fused decode call with the given knobs, over the rotating metas."""

    def call(m: LoraBatchMeta) -> None:
        slots, sync = m.token_slots, m.sync
        tables = (t.a, t.b, t.ranks, t.scales, t.offsets)
        knobs = {"unit_elements": unit, "num_warps": warps}
        decode_lora_(y, x, *tables, slots, sync, **knobs)

    return time_graph_us([lambda m=m: call(m) for m in metas] * 2)


def decode_sweep(copy_gbs: float) -> str:
    """µs of the fused decode kernel per (A/B elements per program, warps), one 4096->4096
    projection; * = fastest of the row."""
    rows = []
    knobs = [(u, w) for u in SWEEP_UNITS for w in SWEEP_WARPS]
    for tokens, distinct, rank in SWEEP_POINTS:
        tables = Tables(rank, 2048 if rank <= 16 else 512)
        x = torch.randn(tokens, HIDDEN, device="cuda", dtype=DT)
        y = torch.zeros(tokens, HIDDEN, device="cuda", dtype=DT)
        metas = []
        for _ in range(8):
            chosen = torch.randperm(tables.slots, device="cuda")[:distinct].int()
            meta = LoraBatchMeta.allocate(tokens, tables.slots, "cuda")
            meta.update_(chosen.repeat_interleave(-(-tokens // distinct))[:tokens])
            metas.append(meta)
        times = [_time_decode(tables, x, y, metas, unit, warps) for unit, warps in knobs]
        read_us = distinct * 2 * rank * HIDDEN * 2 / copy_gbs / 1e3
        best = min(range(len(times)), key=lambda i: times[i])
        cells = [f"{us:.1f}" + (" *" if i == best else "") for i, us in enumerate(times)]
        rows.append([tokens, distinct, rank, f"{read_us:.2f}", *cells])
        del tables
        torch.cuda.empty_cache()
    header = ["tokens", "adapters", "rank", "µs read at copy BW"]
    header += [f"u{u // 1024}k w{w}" for u, w in knobs]
    return (
        f"\n\n#### Fused decode kernel sweep (µs; default u{UNIT_ELEMENTS // 1024}k w4)\n\n"
        + markdown_table(header, rows)
    )


def _path(tokens: int, rank: int) -> str:
    """The kernel ``lora_apply_`` runs for a 4096 -> 4096 projection."""
    if uses_token_kernel(tokens, rank, [0, HIDDEN], loads_a_whole(HIDDEN, rank, [0, HIDDEN])):
        return "per-token"
    return "fused" if uses_fused_kernel(tokens, rank) else "tiled"


def goal_point(copy_gbs: float) -> str:
    """64 tokens on 64 rank-16 adapters, one 4096 -> 4096 projection: ``lora_apply_`` (the
    per-token kernel) and the fused kernel, each with PDL launches and plain ones. Back to back
    in a graph, a PDL launch lets each call's B loads overlap the call ahead of it."""
    tables = Tables(16, 2048)
    x = torch.randn(64, HIDDEN, device="cuda", dtype=DT)
    y = torch.zeros(64, HIDDEN, device="cuda", dtype=DT)
    metas = []
    for _ in range(8):
        meta = LoraBatchMeta.allocate(64, tables.slots, "cuda")
        meta.update_(torch.randperm(tables.slots, device="cuda")[:64].int())
        metas.append(meta)
    tabs = (tables.a, tables.b, tables.ranks, tables.scales, tables.offsets)
    read_us = tables.adapter_bytes() * 64 / copy_gbs / 1e3
    was_enabled = pdl.enabled()
    rows = []
    for launches in ("PDL", "plain"):
        pdl.set_enabled(launches == "PDL")
        apply_us = time_graph_us([lambda m=m: lora_apply_(y, x, *tabs, m) for m in metas] * 2)
        fused_us = _time_decode(tables, x, y, metas, UNIT_ELEMENTS, 4)
        rows.append([launches, apply_us, apply_us / read_us, fused_us, fused_us / read_us])
    pdl.set_enabled(was_enabled)
    header = ["launches", "µs lora_apply_ (per-token)", "× read", "µs fused kernel", "× read"]
    title = (
        f"\n\n#### Goal point: 64 tokens on 64 rank-16 adapters, 4096 → 4096 "
        f"(read at copy BW: {read_us:.2f} µs)\n\n"
    )
    return title + markdown_table(header, rows)


def run(copy_gbs: float) -> str:
    """tokens × distinct adapters × rank grid; one slice (a 4096->4096 projection)."""
    rows = []
    for rank, slots in ((8, 2048), (16, 2048), (64, 512)):
        tables = Tables(rank, slots)
        for tokens in (1, 16, 64, 256, 2048):
            for distinct in (1, 8, 64):
                if distinct > tokens:
                    continue
                us, tiled_us, base_us = measure(tables, tokens, distinct)
                read_us = distinct * 2 * rank * HIDDEN * 2 / copy_gbs / 1e3
                path = _path(tokens, rank)
                rows.append(
                    [
                        tokens,
                        distinct,
                        rank,
                        path,
                        us,
                        tiled_us,
                        read_us,
                        us / read_us,
                        base_us,
                        us / base_us,
                    ]
                )
        del tables
        torch.cuda.empty_cache()
    meta = LoraBatchMeta.allocate(8192, 2048, "cuda")
    slots_t = torch.randint(-1, 2048, (256,), device="cuda", dtype=torch.int32)
    update_us = time_graph_us([lambda: meta.update_(slots_t)] * 8)
    torch_us = time_graph_us([lambda: meta.update_torch_(slots_t)] * 8)
    out = "### Multi-LoRA shrink + expand, one 4096→4096 projection (bf16)\n\n"
    out += markdown_table(
        [
            "tokens",
            "adapters",
            "rank",
            "lora_apply_ path",
            "µs lora_apply_",
            "µs tiled shrink+expand",
            "µs to read adapters at copy BW",
            "× read time",
            "µs base matmul",
            "× base matmul",
        ],
        rows,
    )
    out += goal_point(copy_gbs)
    out += per_layer(copy_gbs) + per_layer(copy_gbs, table_dtype=torch.float8_e4m3fn)
    out += decode_sweep(copy_gbs)
    return out + (
        f"\n\n`LoraBatchMeta.update_` (per step, 256 tokens, 2048 slots): {update_us:.1f} µs "
        f"(one Triton launch); the PyTorch version: {torch_us:.1f} µs"
    )
