"""LoRA slot tables: PEFT names map to fused slices; write/clear keep the documented layout."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch
from engine_testkit import fp8_round_trip

from lorax_engine.lora import (
    PEFT_TARGETS,
    PROJECTIONS,
    LoraSlots,
    ModelLoraSpec,
    PackedLora,
    pack_lora,
)

SPEC = ModelLoraSpec(
    architecture="llama",
    num_layers=2,
    targets={
        "q_proj": (8, 8),
        "k_proj": (8, 4),
        "v_proj": (8, 4),
        "o_proj": (8, 8),
        "gate_proj": (8, 12),
        "up_proj": (8, 12),
        "down_proj": (12, 8),
    },
)


@dataclass
class Weights:
    rank: int
    scale: float
    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    packed: PackedLora | None = None


def test_write_places_each_target_in_its_slice_and_clear_zeroes() -> None:
    slots = LoraSlots.allocate(SPEC, num_slots=3, max_rank=4, dtype=torch.float32, device="cpu")
    q_a, q_b = torch.randn(2, 8), torch.randn(8, 2)
    v_a, v_b = torch.randn(2, 8), torch.randn(4, 2)
    slots.write_(1, Weights(2, 0.5, {(0, "q_proj"): (q_a, q_b), (0, "v_proj"): (v_a, v_b)}))
    qkv = slots.table(0, "qkv")
    assert qkv.slice_offsets == (0, 8, 12, 16)
    assert torch.equal(qkv.lora_a[0, 1, :2], q_a)
    assert torch.equal(qkv.lora_b[0, 1, :8, :2], q_b)
    assert torch.equal(qkv.lora_a[2, 1, :2], v_a)
    assert torch.equal(qkv.lora_b[2, 1, :4, :2], v_b)
    assert not qkv.lora_a[1, 1].any()  # k not targeted: zero rows
    assert int(qkv.slot_ranks[1]) == 2
    assert float(qkv.slot_scales[1]) == 0.5
    # Projections the adapter does not touch get rank 0 (the kernels skip them).
    assert int(slots.table(0, "down").slot_ranks[1]) == 0
    assert int(slots.table(1, "qkv").slot_ranks[1]) == 0
    slots.clear_(1)
    assert not qkv.lora_a.any()
    assert int(qkv.slot_ranks[1]) == 0


def test_rewriting_a_slot_with_a_lower_rank_leaves_zeros_past_it() -> None:
    """The kernels' contract: a slot's A rows and B columns past its rank are zero (the
    per-token LoRA kernel reads B's rows whole), also where a higher-rank adapter sat before."""
    slots = LoraSlots.allocate(SPEC, num_slots=2, max_rank=4, dtype=torch.float32, device="cpu")
    slots.write_(1, Weights(4, 1.0, {(0, "o_proj"): (torch.randn(4, 8), torch.randn(8, 4))}))
    o_a, o_b = torch.randn(2, 8), torch.randn(8, 2)
    slots.write_(1, Weights(2, 1.0, {(0, "o_proj"): (o_a, o_b)}))
    o = slots.table(0, "o")
    assert torch.equal(o.lora_a[0, 1, :2], o_a)
    assert torch.equal(o.lora_b[0, 1, :, :2], o_b)
    assert not o.lora_a[0, 1, 2:].any()
    assert not o.lora_b[0, 1, :, 2:].any()


def test_bad_shapes_and_ranks_are_refused() -> None:
    slots = LoraSlots.allocate(SPEC, num_slots=2, max_rank=4, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="expected A"):
        slots.write_(0, Weights(2, 1.0, {(0, "q_proj"): (torch.randn(2, 7), torch.randn(8, 2))}))
    with pytest.raises(ValueError, match="max_rank"):
        slots.write_(0, Weights(8, 1.0, {(0, "q_proj"): (torch.randn(8, 8), torch.randn(8, 8))}))
    with pytest.raises(ValueError, match="does not have"):
        slots.write_(0, Weights(2, 1.0, {(5, "q_proj"): (torch.randn(2, 8), torch.randn(8, 2))}))


def test_every_peft_target_has_a_slice() -> None:
    for name, (proj, idx) in PEFT_TARGETS.items():
        in_features, offsets = SPEC.projection_shape(proj)
        assert in_features == SPEC.targets[name][0]
        assert offsets[idx + 1] - offsets[idx] == SPEC.targets[name][1]


class _ReferenceTable:
    """The per-table layout of docs/internals.md section 1, written one module at a time: the
    readable definition the packed, slot-major write must reproduce exactly."""

    def __init__(self, in_features: int, offsets: tuple[int, ...], slots: int, rank: int) -> None:
        self.offsets = offsets
        widths = [b - a for a, b in itertools.pairwise(offsets)]
        n = len(widths)
        self.lora_a = torch.zeros(n, slots, rank, in_features)
        self.lora_b = torch.zeros(n, slots, max(widths), rank)
        self.slot_ranks = torch.zeros(slots, dtype=torch.int32)
        self.slot_scales = torch.zeros(slots)

    def write_(self, slot: int, slices: list[tuple[torch.Tensor, torch.Tensor] | None], w: Weights):
        self.lora_a[:, slot] = 0
        self.lora_b[:, slot] = 0
        targeted = [pair for pair in slices if pair is not None]
        for s, pair in enumerate(slices):
            if pair is not None:
                width = self.offsets[s + 1] - self.offsets[s]
                self.lora_a[s, slot, : w.rank] = pair[0]
                self.lora_b[s, slot, :width, : w.rank] = pair[1]
        self.slot_ranks[slot] = w.rank if targeted else 0
        self.slot_scales[slot] = w.scale if targeted else 0.0


def _reference(slots: int, rank: int) -> dict[tuple[int, str], _ReferenceTable]:
    return {
        (layer, proj): _ReferenceTable(*SPEC.projection_shape(proj), slots, rank)
        for layer in range(SPEC.num_layers)
        for proj in PROJECTIONS
    }


def _random_adapter(gen: torch.Generator, rank: int, keys: list[tuple[int, str]]) -> Weights:
    modules = {}
    for layer, target in keys:
        fin, fout = SPEC.targets[target]
        modules[(layer, target)] = (
            torch.randn(rank, fin, generator=gen),
            torch.randn(fout, rank, generator=gen),
        )
    return Weights(rank, float(torch.rand((), generator=gen)) + 0.5, modules)


def test_packed_slot_major_write_equals_the_per_module_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    every = [(layer, t) for layer in range(SPEC.num_layers) for t in SPEC.targets]
    adapters = [
        _random_adapter(gen, 4, every),  # max rank, every module
        _random_adapter(gen, 2, [(0, "q_proj"), (0, "v_proj"), (1, "q_proj"), (1, "v_proj")]),
        _random_adapter(gen, 3, [(1, "down_proj"), (1, "k_proj")]),  # layer 0 untargeted
        _random_adapter(gen, 1, [(0, "up_proj")]),  # half of a fused gate_up, one layer
    ]
    slots = LoraSlots.allocate(SPEC, num_slots=3, max_rank=4, dtype=torch.float32, device="cpu")
    ref = _reference(3, 4)
    # Slot 1 is written three times: each write must leave nothing of the one before.
    for slot, w in [(0, adapters[0]), (1, adapters[0]), (2, adapters[1]), (1, adapters[2])]:
        packed = pack_lora(w)
        slots.write_(slot, packed if slot != 2 else w)  # packed or packed on the fly
        for (layer, proj), table in ref.items():
            table.write_(slot, [w.modules.get((layer, n)) for n in PROJECTIONS[proj]], w)
    slots.write_(0, adapters[3])
    for (layer, proj), table in ref.items():
        table.write_(
            0, [adapters[3].modules.get((layer, n)) for n in PROJECTIONS[proj]], adapters[3]
        )
    for (layer, proj), want in ref.items():
        got = slots.table(layer, proj)
        assert torch.equal(got.lora_a, want.lora_a), (layer, proj)
        assert torch.equal(got.lora_b, want.lora_b), (layer, proj)
        assert torch.equal(got.slot_ranks, want.slot_ranks), (layer, proj)
        assert torch.equal(got.slot_scales, want.slot_scales), (layer, proj)
    slots.clear_(1)
    for (layer, proj), want in ref.items():
        got = slots.table(layer, proj)
        assert not got.lora_a[:, 1].any()
        assert not got.lora_b[:, 1].any()
        assert int(got.slot_ranks[1]) == 0
        assert torch.equal(got.lora_a[:, 0], want.lora_a[:, 0])  # other slots untouched


def test_packing_keeps_every_module_and_round_trips() -> None:
    gen = torch.Generator().manual_seed(1)
    w = _random_adapter(gen, 3, [(1, "q_proj"), (0, "gate_proj"), (1, "gate_proj")])
    packed = pack_lora(w)
    assert packed.num_layers == 2
    assert packed.layers == {"q_proj": frozenset({1}), "gate_proj": frozenset({0, 1})}
    assert packed.a["gate_proj"].shape == (3, 2, 8)
    assert packed.b["gate_proj"].shape == (2, 12, 3)
    assert not packed.a["q_proj"][:, 0].any()  # layer 0 has no q_proj: zeros
    views = packed.module_views()
    assert views.keys() == w.modules.keys()
    for key, (a, b) in w.modules.items():
        assert torch.equal(views[key][0], a)
        assert torch.equal(views[key][1], b)
    assert packed.nbytes == 4 * 2 * 3 * ((8 + 8) + (8 + 12))
    with pytest.raises(ValueError, match="expected A"):
        pack_lora(Weights(2, 1.0, {(0, "q_proj"): (torch.randn(3, 8), torch.randn(8, 2))}))


def test_slot_out_of_range_is_refused() -> None:
    slots = LoraSlots.allocate(SPEC, num_slots=2, max_rank=4, dtype=torch.float32, device="cpu")
    w = Weights(2, 1.0, {(0, "q_proj"): (torch.randn(2, 8), torch.randn(8, 2))})
    for slot in (-1, 2):
        with pytest.raises(IndexError):
            slots.write_(slot, w)
        with pytest.raises(IndexError):
            slots.clear_(slot)


# ---- --lora-dtype fp8 ---------------------------------------------------------------------------


@dataclass
class _Fp8Projection:
    """One projection of one layer of an adapter, and what fp8 tables should hold for it by
    engine_testkit's rule (written apart from the engine): per slice, zeros where it lacks one."""

    a: list[torch.Tensor]  # [rank, in] per slice
    b: list[torch.Tensor]  # [width, rank] per slice
    a_deq: list[torch.Tensor]  # fp8 round trips
    b_deq: list[torch.Tensor]
    s_a: torch.Tensor  # the shared scales
    s_b: torch.Tensor


def _projection_fp8(w: Weights, layer: int, proj: str) -> _Fp8Projection | None:
    """None where the adapter leaves ``proj`` of ``layer`` alone."""
    names = PROJECTIONS[proj]
    if not any((layer, n) in w.modules for n in names):
        return None
    a, b = [], []
    for n in names:
        fin, fout = SPEC.targets[n]
        zeros = (torch.zeros(w.rank, fin), torch.zeros(fout, w.rank))
        pair = w.modules.get((layer, n), zeros)
        a.append(pair[0])
        b.append(pair[1])
    (a_deq, s_a), (b_deq, s_b) = fp8_round_trip(a), fp8_round_trip(b)
    return _Fp8Projection(a, b, a_deq, b_deq, s_a, s_b)


def test_fp8_tables_hold_each_adapter_within_fp8_rounding_and_fold_the_scales() -> None:
    gen = torch.Generator().manual_seed(2)
    every = [(layer, t) for layer in range(SPEC.num_layers) for t in SPEC.targets]
    full = _random_adapter(gen, 4, every)
    # Magnitudes far apart per layer and projection: each must get its own scale.
    for i, key in enumerate(sorted(full.modules)):
        a, b = full.modules[key]
        full.modules[key] = (a * 10.0 ** (i % 5 - 2), b * 10.0 ** (2 - i % 3))
    mixed = _random_adapter(gen, 3, [(0, "q_proj"), (0, "v_proj"), (1, "down_proj")])
    zero_b = _random_adapter(gen, 2, [(1, "o_proj"), (1, "gate_proj")])
    zero_b.modules[(1, "o_proj")] = (zero_b.modules[(1, "o_proj")][0], torch.zeros(8, 2))
    slots = LoraSlots.allocate(SPEC, 3, 4, torch.float8_e4m3fn, "cpu")
    for slot, w in enumerate((full, mixed, zero_b)):
        slots.write_(slot, w if slot else pack_lora(w))
    x = torch.randn(5, 12, generator=gen)
    for slot, w in enumerate((full, mixed, zero_b)):
        for (layer, proj), got in ((k, slots.table(*k)) for k in _reference(1, 1)):
            assert got.lora_a.dtype == got.lora_b.dtype == torch.float8_e4m3fn
            want = _projection_fp8(w, layer, proj)
            if want is None:  # untargeted: rank 0, scale 0, zero rows
                assert int(got.slot_ranks[slot]) == 0
                assert float(got.slot_scales[slot]) == 0.0
                assert not got.lora_a[:, slot].float().any()
                continue
            assert int(got.slot_ranks[slot]) == w.rank
            table_scale = got.slot_scales[slot]
            s_a, s_b = want.s_a, want.s_b
            torch.testing.assert_close(table_scale, w.scale * s_a * s_b, rtol=1e-6, atol=0)
            assert not got.lora_a[:, slot, w.rank :].float().any()  # past the rank: zero
            xs = x[:, : got.in_features]
            for s in range(got.num_slices):
                width = got.slice_offsets[s + 1] - got.slice_offsets[s]
                a8 = got.lora_a[s, slot, : w.rank].float()  # [rank, in]
                b8 = got.lora_b[s, slot, :width, : w.rank].float()  # [width, rank]
                # Bit for bit the rule's rounding (what the PEFT parity test's reference uses)...
                assert torch.equal(a8 * s_a, want.a_deq[s]), (slot, layer, proj, s)
                assert torch.equal(b8 * s_b, want.b_deq[s]), (slot, layer, proj, s)
                # ... which is the adapter within e4m3's half spacing: 2^-4 of each value, and
                # 2^-10 of the scale among the subnormals.
                for deq, orig, scale in ((a8 * s_a, want.a[s], s_a), (b8 * s_b, want.b[s], s_b)):
                    tol = 2**-10 * float(scale)
                    torch.testing.assert_close(deq, orig, rtol=2**-4 + 1e-6, atol=tol)
                # The kernels' delta, scale * (x A8^T) B8^T, is the round trip's (to float32
                # rounding) and the adapter's within fp8 rounding.
                delta = table_scale * (xs @ a8.T) @ b8.T  # [tokens, width]
                faked = w.scale * (xs @ want.a_deq[s].T) @ want.b_deq[s].T
                exact = w.scale * (xs @ want.a[s].T) @ want.b[s].T
                assert (delta - faked).norm() <= 1e-5 * faked.norm(), (slot, layer, proj, s)
                assert (delta - exact).norm() <= 2**-3 * exact.norm(), (slot, layer, proj, s)
    # An all-zero B (o_proj of zero_b) gets scale 1: no NaN, and the table's delta is zero.
    o = slots.table(1, "o")
    assert torch.isfinite(o.slot_scales).all()
    assert not o.lora_b[:, 2].float().any()
    slots.clear_(1)
    for layer, proj in _reference(1, 1):
        t = slots.table(layer, proj)
        assert not t.lora_a[:, 1].float().any()
        assert not t.lora_b[:, 1].float().any()
        assert int(t.slot_ranks[1]) == 0
        assert float(t.slot_scales[1]) == 0.0
    assert torch.equal(slots.table(0, "qkv").slot_ranks, torch.tensor([4, 0, 0], dtype=torch.int32))


def test_fp8_tables_take_half_the_bytes() -> None:
    meta = 8 * SPEC.num_layers * len(PROJECTIONS)  # each table's int32 rank and float32 scale
    bf16 = LoraSlots.bytes_per_slot(SPEC, 4, torch.bfloat16)
    fp8 = LoraSlots.bytes_per_slot(SPEC, 4, torch.float8_e4m3fn)
    assert 2 * (fp8 - meta) == bf16 - meta
    slots = LoraSlots.allocate(SPEC, 3, 4, torch.float8_e4m3fn, "cpu")
    assert slots.nbytes == 3 * (fp8 - meta)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        LoraSlots.allocate(SPEC, 3, 4, torch.float8_e5m2, "cpu")
