"""The tensor-parallel context one model shard runs in: its rank, the group, the collectives."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from lorax_engine.models.model_config import ModelConfig


@dataclass(slots=True, frozen=True)
class TensorParallel:
    """Rank ``rank`` of ``size`` shards; ``group`` carries the forward's collectives.

    ``size == 1`` (the default) is the unsharded model: every collective is the identity, so the
    decoder has one code path.
    """

    rank: int = 0
    size: int = 1
    group: Any = None  # torch.distributed ProcessGroup; None when size == 1

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"rank {self.rank} is not in a group of {self.size}")
        if self.size > 1 and self.group is None:
            raise ValueError("a sharded model needs a process group")

    def all_reduce_(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the shards in place (the output of a row-parallel layer)."""
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def gather_columns(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, c]`` per shard -> ``[n, size * c]`` on every shard, shard r's columns at ``r * c``."""
        if self.size == 1:
            return x
        n, c = x.shape
        out = torch.empty(self.size * n, c, dtype=x.dtype, device=x.device)
        dist.all_gather_into_tensor(out, x.contiguous(), group=self.group)
        return out.view(self.size, n, c).permute(1, 0, 2).reshape(n, self.size * c)

    def split(self, total: int) -> tuple[int, int]:
        """``(start, length)`` of this shard's part of ``total`` (which the shards divide)."""
        part = total // self.size
        return self.rank * part, part


# HF/PEFT projections whose output rows are split across shards, and those whose input columns are.
COLUMN_PARALLEL = frozenset({"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"})
ROW_PARALLEL = frozenset({"o_proj", "down_proj"})


def padded_vocab(vocab_size: int, num_shards: int) -> int:
    """The vocabulary rounded up to a multiple of the shard count (extra rows are zero)."""
    return -(-vocab_size // num_shards) * num_shards


def check_shardable(cfg: ModelConfig, num_shards: int) -> None:
    """Raise ValueError, naming the dimension, when ``num_shards`` cannot split the model evenly.

    Heads, KV heads and the MLP width must divide; the vocabulary is padded instead.
    """
    if num_shards < 1:
        raise ValueError("num_shard must be >= 1")
    dims = {
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "intermediate_size": cfg.intermediate_size,
    }
    bad = [f"{name}={value}" for name, value in dims.items() if value % num_shards]
    if bad:
        raise ValueError(
            f"--num-shard {num_shards} must divide {', '.join(bad)} of this model; "
            "choose a shard count that divides every one of them"
        )


def shard_config(cfg: ModelConfig, num_shards: int) -> ModelConfig:
    """The per-shard shape: heads, KV heads and MLP width divided, vocabulary padded and divided.

    What one shard allocates (its KV cache holds ``num_kv_heads // num_shards`` heads).
    """
    check_shardable(cfg, num_shards)
    if num_shards == 1:
        return cfg
    return replace(
        cfg,
        num_heads=cfg.num_heads // num_shards,
        num_kv_heads=cfg.num_kv_heads // num_shards,
        intermediate_size=cfg.intermediate_size // num_shards,
        vocab_size=padded_vocab(cfg.vocab_size, num_shards) // num_shards,
    )
