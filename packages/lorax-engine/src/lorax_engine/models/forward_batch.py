"""Per-step model inputs: one flat, unpadded token batch over the paged KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorax_kernels import LoraBatchMeta


@dataclass(slots=True, frozen=True)
class ForwardBatch:
    """Everything one forward pass needs, built once per step by the model runner.

    Sequences are laid out back to back; sequence ``s`` owns tokens
    ``query_start_loc[s]:query_start_loc[s + 1]`` (a decode is a chunk of one token).
    """

    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    slot_mapping: torch.Tensor  # [num_tokens] int64, KV cache slot of each token (-1 = padding)
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor  # [num_seqs] int32, KV length after this step
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    is_decode: bool  # every sequence has exactly one query token: the decode attention path
    # The step's token -> LoRA slot mapping, or None when no token uses an adapter.
    lora_meta: LoraBatchMeta | None = None
