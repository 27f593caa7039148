"""Rotary position embeddings (default, linear and Llama-3 scaling), applied to flat token batches."""

from __future__ import annotations

import math

import torch

import lorax_kernels
from lorax_engine.models.model_config import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """The per-pair rotation frequencies, ``[head_dim // 2]`` float32, with scaling applied."""
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if rope.rope_type == "linear":
        inv_freq = inv_freq / rope.factor
    elif rope.rope_type == "llama3":
        # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, a smooth ramp between.
        old_len = rope.original_max_position_embeddings
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    return inv_freq.to(torch.float32)


class RotaryEmbedding(torch.nn.Module):
    """Precomputed cos/sin tables indexed by absolute position (so a flat batch needs one gather)."""

    cos_sin: torch.Tensor

    def __init__(self, rope: RopeConfig, head_dim: int, max_positions: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        inv_freq = inverse_frequencies(rope, head_dim)
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [max_positions, head_dim // 2]
        # Non-persistent: derived from the config, never part of a checkpoint.
        self.register_buffer(
            "cos_sin", torch.cat([freqs.cos(), freqs.sin()], dim=-1), persistent=False
        )

    def rotate_(self, qk: torch.Tensor, positions: torch.Tensor) -> None:
        """Rotate ``qk: [T, H, D]`` (q and k heads side by side, a view of the qkv output) in
        place by each token's position: HF's half-split rotation, in qk's dtype as HF computes it.
        One kernel gathers the table rows and rotates every head."""
        lorax_kernels.rotary_embedding_(qk, positions, self.cos_sin)
