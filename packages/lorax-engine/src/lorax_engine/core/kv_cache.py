"""Paged KV cache tensors and the sizing of the block pool."""

from __future__ import annotations

import torch

from lorax_engine.models.model_config import ModelConfig


def kv_bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block takes across all layers, keys and values."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * itemsize


def allocate_kv_cache(
    cfg: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer ``(k_cache, v_cache)``, each ``[num_blocks, block_size, num_kv_heads, head_dim]``."""
    shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
    return [
        (
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
        )
        for _ in range(cfg.num_layers)
    ]


def activation_reserve_bytes(
    cfg: ModelConfig, max_tokens: int, max_logit_rows: int, dtype: torch.dtype
) -> int:
    """A generous bound on one step's transient memory (activations, logits, sampler temporaries).

    Counted rather than profiled: the widest per-token tensors of a layer live at once (the fused
    gate_up output and its product), plus float32 logits and about four vocab-sized sampler
    temporaries per sampled row. Doubled for the allocator's fragmentation.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_token = (
        3 * cfg.intermediate_size + 2 * (cfg.q_size + 2 * cfg.kv_size) + 4 * cfg.hidden_size
    ) * itemsize
    logits = max_logit_rows * cfg.vocab_size * 4 * 5
    return 2 * (max_tokens * per_token + logits)
