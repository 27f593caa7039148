"""How PEFT module names map onto the runner's fused projections (docs/internals.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass, field

# PEFT target name -> (fused projection, slice index inside it).
PEFT_TARGETS: dict[str, tuple[str, int]] = {
    "q_proj": ("qkv", 0),
    "k_proj": ("qkv", 1),
    "v_proj": ("qkv", 2),
    "o_proj": ("o", 0),
    "gate_proj": ("gate_up", 0),
    "up_proj": ("gate_up", 1),
    "down_proj": ("down", 0),
}

# Fused projection -> its PEFT targets in slice order.
PROJECTIONS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}


@dataclass(slots=True, frozen=True)
class ModelLoraSpec:
    """What an adapter must match: the architecture, layer count and every target's shape."""

    architecture: str
    num_layers: int
    # PEFT target name -> (in_features, out_features) of the base linear layer.
    targets: dict[str, tuple[int, int]] = field(default_factory=dict[str, tuple[int, int]])

    def __post_init__(self) -> None:
        if self.num_layers <= 0:
            raise ValueError("num_layers must be positive")
        unknown = set(self.targets) - set(PEFT_TARGETS)
        if unknown:
            raise ValueError(f"unknown LoRA targets: {sorted(unknown)}")
        for proj, names in PROJECTIONS.items():
            ins = {self.targets[n][0] for n in names if n in self.targets}
            if len(ins) > 1:
                raise ValueError(f"slices of {proj} must share in_features")

    def projection_shape(self, projection: str) -> tuple[int, tuple[int, ...]]:
        """``(in_features, slice_offsets)`` of a fused projection; offsets has num_slices + 1 entries."""
        names = PROJECTIONS[projection]
        in_features = self.targets[names[0]][0]
        offsets = [0]
        for name in names:
            offsets.append(offsets[-1] + self.targets[name][1])
        return in_features, tuple(offsets)
