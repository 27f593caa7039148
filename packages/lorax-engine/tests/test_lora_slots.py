"""LoRA slot tables: PEFT names map to fused slices; write/clear keep the documented layout."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from lorax_engine.lora import PEFT_TARGETS, LoraSlots, ModelLoraSpec

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
