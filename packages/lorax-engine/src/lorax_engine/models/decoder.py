"""Llama / Mistral / Qwen2 decoder over a flat token batch and a paged KV cache.

The three architectures differ only in config (q/k/v biases, sliding window, rope scaling), so
one module implements them. Projections are fused (qkv, gate_up) so each layer runs four GEMMs;
every projection adds the LoRA delta of the batch's adapters through the slot tables.

Tensor parallelism (``TensorParallel`` with ``size > 1``): each shard holds its share of the heads
(and of the KV heads), of the MLP width and of the vocabulary. qkv and gate_up are column-parallel
(output rows split), o and down row-parallel (input columns split, outputs summed over the shards),
the embedding and lm_head vocab-parallel. The hidden state between layers is whole on every shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

import lorax_kernels
from lorax_engine.distributed.parallel import (
    COLUMN_PARALLEL,
    ROW_PARALLEL,
    TensorParallel,
    shard_config,
)
from lorax_engine.lora import LoraSlots, ModelLoraSpec
from lorax_engine.lora.side_stream import project_with_lora
from lorax_engine.models.dense_linear import linear
from lorax_engine.models.forward_batch import ForwardBatch
from lorax_engine.models.model_config import ModelConfig
from lorax_engine.models.rope import RotaryEmbedding
from lorax_kernels import LoraBatchMeta


class RMSNorm(nn.Module):
    """RMS norm computed in float32, cast back before the weight (as HF Llama does), with the
    residual add before it fused into the same kernel."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(norm(x + residual), x + residual)``; without a residual ``(norm(x), x)`` (the first
        layer, whose residual stream starts at the embedding)."""
        if residual is None:
            return lorax_kernels.rms_norm(x, self.weight, self.eps), x
        return lorax_kernels.fused_add_rms_norm(x, residual, self.weight, self.eps)


class LoraLinear(nn.Module):
    """A (possibly fused) linear layer ``y = x W^T (+ b) + LoRA(x)``.

    With a quantized base (``lorax_engine.quant``) ``weight`` is None and ``quant(x, bias)``
    computes ``x W^T + b`` from the quantized weight; the LoRA delta is added the same way.

    ``reduce``: a row-parallel shard, whose ``x`` and ``W`` (and LoRA A) hold only its input
    columns. Its partial ``x W^T + x A^T B^T`` is summed over the shards, then the bias added once:
    summing the partial LoRA products is the exact delta, with no extra collective for it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        layer: int,
        name: str,
        reduce: TensorParallel | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight: nn.Parameter | None = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.quant: nn.Module | None = None
        self.layer = layer
        self.name = name
        self.slots: LoraSlots | None = None
        self.reduce = reduce if reduce is not None and reduce.size > 1 else None

    def _base_projection(self, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        """``x W^T + b`` (the bias left to after the all-reduce on a row-parallel shard)."""
        bias = None if self.reduce is not None else self.bias
        if self.quant is not None:
            quant = self.quant
            return lambda: quant(x, bias)  # [num_tokens, out_features]
        weight = self.weight
        assert weight is not None
        return lambda: linear(x, weight, bias)  # [num_tokens, out_features]

    def forward(self, x: torch.Tensor, lora_meta: LoraBatchMeta | None) -> torch.Tensor:
        if lora_meta is not None and self.slots is not None:
            table = self.slots.table(self.layer, self.name)
            y = project_with_lora(self._base_projection(x), x, table, lora_meta)
        else:
            y = self._base_projection(x)()
        if self.reduce is not None:
            self.reduce.all_reduce_(y)
            if self.bias is not None:
                y = y + self.bias
        return y


class Attention(nn.Module):
    """``cfg`` is the shard's shape: its heads, KV heads and their q/kv sizes."""

    def __init__(self, cfg: ModelConfig, layer: int, tp: TensorParallel) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv = LoraLinear(
            cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, cfg.qkv_bias, layer, "qkv"
        )
        self.o = LoraLinear(cfg.q_size, cfg.hidden_size, cfg.o_bias, layer, "o", reduce=tp)
        self.scale = cfg.head_dim**-0.5

    def forward(
        self,
        x: torch.Tensor,
        batch: ForwardBatch,
        rotary: RotaryEmbedding,
        kv: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        cfg = self.cfg
        qkv = self.qkv(x, batch.lora_meta)  # [T, q_size + 2 * kv_size]
        num_tokens = qkv.shape[0]
        # Rotate q and k together, in place in the qkv output: one kernel for both.
        qk = qkv[:, : cfg.q_size + cfg.kv_size].view(num_tokens, -1, cfg.head_dim)
        rotary.rotate_(qk, batch.positions)  # [T, Hq + Hkv, D]
        q = qk[:, : cfg.num_heads]
        k = qk[:, cfg.num_heads :]
        v = qkv[:, cfg.q_size + cfg.kv_size :].view(num_tokens, cfg.num_kv_heads, cfg.head_dim)
        k_cache, v_cache = kv
        lorax_kernels.reshape_and_cache_(k, v, k_cache, v_cache, batch.slot_mapping)
        if batch.is_decode:
            out = lorax_kernels.paged_decode_attention(
                q,
                k_cache,
                v_cache,
                batch.block_tables,
                batch.seq_lens,
                self.scale,
                sliding_window=cfg.sliding_window,
            )
        else:
            out = lorax_kernels.paged_prefill_attention(
                q,
                k_cache,
                v_cache,
                batch.block_tables,
                batch.query_start_loc,
                batch.seq_lens,
                self.scale,
                sliding_window=cfg.sliding_window,
            )
        return self.o(out.reshape(-1, cfg.q_size), batch.lora_meta)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, tp: TensorParallel) -> None:
        super().__init__()
        self.gate_up = LoraLinear(
            cfg.hidden_size, 2 * cfg.intermediate_size, cfg.mlp_bias, layer, "gate_up"
        )
        self.down = LoraLinear(
            cfg.intermediate_size, cfg.hidden_size, cfg.mlp_bias, layer, "down", reduce=tp
        )

    def forward(self, x: torch.Tensor, lora_meta: LoraBatchMeta | None) -> torch.Tensor:
        gate_up = self.gate_up(x, lora_meta)  # [T, 2 * intermediate]: [gate | up]
        return self.down(lorax_kernels.silu_and_mul(gate_up), lora_meta)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, tp: TensorParallel) -> None:
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer, tp)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, layer, tp)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        batch: ForwardBatch,
        rotary: RotaryEmbedding,
        kv: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(MLP output, residual stream)`` from the previous layer's pair, or from the embedding
        and no residual. Each add into the residual stream is fused into the norm after it, so the
        stream is "carried": the last layer's add happens in the model's final norm."""
        h, stream = self.input_norm(x, residual)
        h, stream = self.post_attn_norm(self.attn(h, batch, rotary, kv), stream)
        return self.mlp(h, batch.lora_meta), stream


class DecoderModel(nn.Module):
    """A causal LM: ``forward`` gives hidden states, ``compute_logits`` the vocabulary scores.

    ``cfg`` is the whole model's shape; ``shard_cfg`` what this shard holds (``cfg`` itself
    without tensor parallelism), which sizes its KV cache and LoRA slot tables.

    ``lm_head_quant``: a quantized LM head (``quant.load`` sets one for ``--quantize fp8``), a
    module ``(hidden, bias) -> logits`` over this shard's vocabulary rows. When set,
    ``compute_logits`` reads it instead of ``lm_head`` (or, tied, the embedding table).
    """

    def __init__(
        self, cfg: ModelConfig, max_positions: int, tp: TensorParallel | None = None
    ) -> None:
        super().__init__()
        self.tp = tp if tp is not None else TensorParallel()
        self.cfg = cfg
        self.shard_cfg = shard = shard_config(cfg, self.tp.size)
        # [vocab / shards, hidden]: this shard's rows of the (padded) vocabulary.
        self.embed = nn.Embedding(shard.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(shard, i, self.tp) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else nn.Parameter(torch.empty(shard.vocab_size, cfg.hidden_size))
        )
        self.lm_head_quant: nn.Module | None = None
        self.rotary = RotaryEmbedding(cfg.rope, cfg.head_dim, max_positions)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return self.embed(input_ids)  # [num_tokens, hidden]
        # Each shard embeds the ids in its vocabulary range, zeros elsewhere; the sum is whole.
        start = self.tp.rank * self.shard_cfg.vocab_size
        local = input_ids - start
        inside = (local >= 0) & (local < self.shard_cfg.vocab_size)
        x = self.embed(local.clamp(0, self.shard_cfg.vocab_size - 1))
        x = x * inside.unsqueeze(1).to(x.dtype)
        return self.tp.all_reduce_(x)

    def forward(
        self, batch: ForwardBatch, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        x = self._embed(batch.input_ids)  # [num_tokens, hidden]
        residual: torch.Tensor | None = None
        for layer, kv in zip(self.layers, kv_caches, strict=True):
            x, residual = layer(x, residual, batch, self.rotary, kv)
        return self.norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[n, hidden] -> [n, vocab]`` logits in the lm_head's output dtype (gathered from the
        shards: every shard gets them, as one all-gather is cheaper than a gather to one rank with
        NCCL). Not copied to float32: the greedy kernel and the sampler compute in float32 from
        them, and a float32 copy of a batch-256 step's logits was a 94 µs kernel of its own (H200,
        run 5's profile)."""
        if self.lm_head_quant is not None:
            local = self.lm_head_quant(hidden, None)  # [n, vocab / shards]
        else:
            weight = self.embed.weight if self.lm_head is None else self.lm_head
            local = linear(hidden, weight, None)  # [n, vocab / shards]
        logits = self.tp.gather_columns(local)  # [n, padded vocab]
        return logits[:, : self.cfg.vocab_size]

    def lora_spec(self) -> ModelLoraSpec:
        """The whole model's LoRA targets: what an adapter's shapes are validated against."""
        return _lora_spec(self.cfg)

    def shard_lora_spec(self) -> ModelLoraSpec:
        """This shard's part of every target: the shapes of its slot tables."""
        return _lora_spec(self.shard_cfg)

    def attach_lora(self, slots: LoraSlots) -> None:
        """Point every projection at the slot tables (they stay preallocated for CUDA graphs)."""
        for module in self.modules():
            if isinstance(module, LoraLinear):
                module.slots = slots

    def load_hf_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into the fused parameters; raises on missing or unexpected names.

        A shard keeps its part of each tensor (``_shard_of``); the offsets are the shard's.
        """
        cfg = self.shard_cfg
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        q, kv, inter = cfg.q_size, cfg.kv_size, cfg.intermediate_size
        fused = {  # HF suffix -> (our suffix, row offset)
            "self_attn.q_proj": ("attn.qkv", 0),
            "self_attn.k_proj": ("attn.qkv", q),
            "self_attn.v_proj": ("attn.qkv", q + kv),
            "self_attn.o_proj": ("attn.o", 0),
            "mlp.gate_proj": ("mlp.gate_up", 0),
            "mlp.up_proj": ("mlp.gate_up", inter),
            "mlp.down_proj": ("mlp.down", 0),
            "input_layernorm": ("input_norm", 0),
            "post_attention_layernorm": ("post_attn_norm", 0),
        }
        for name, tensor in weights:
            if "rotary_emb" in name:
                continue
            target, offset = _map_name(name, fused)
            if target is None:
                if name == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue
                raise ValueError(f"unexpected weight {name!r} in checkpoint")
            param = params[target]
            tensor = self._shard_of(name, tensor)
            rows = tensor.shape[0]
            with torch.no_grad():
                param[offset : offset + rows].copy_(tensor)
            loaded.add(f"{target}@{offset}")
        expected = _expected_keys(self, fused)
        missing = expected - loaded
        if missing:
            raise ValueError(f"checkpoint is missing weights: {sorted(missing)[:6]}")

    def _shard_of(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """This shard's part of a whole HF tensor (the tensor itself without sharding)."""
        tp = self.tp
        if tp.size == 1:
            return tensor
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            rows = self.shard_cfg.vocab_size
            part = tensor[tp.rank * rows : (tp.rank + 1) * rows]
            # The last shard's rows past the real vocabulary are zero (never embedded; their
            # logits are cut off after the gather).
            return F.pad(part, (0, 0, 0, rows - part.shape[0]))
        module = name.split(".")[-2] if name.startswith("model.layers.") else ""
        if module in COLUMN_PARALLEL:
            dim = 0  # output rows: weight and bias
        elif module in ROW_PARALLEL and tensor.dim() == 2:
            dim = 1  # input columns; the bias is added once, after the sum
        else:
            return tensor
        start, length = tp.split(tensor.shape[dim])
        return tensor.narrow(dim, start, length)


def _lora_spec(cfg: ModelConfig) -> ModelLoraSpec:
    return ModelLoraSpec(
        architecture=cfg.architecture,
        num_layers=cfg.num_layers,
        targets={
            "q_proj": (cfg.hidden_size, cfg.q_size),
            "k_proj": (cfg.hidden_size, cfg.kv_size),
            "v_proj": (cfg.hidden_size, cfg.kv_size),
            "o_proj": (cfg.q_size, cfg.hidden_size),
            "gate_proj": (cfg.hidden_size, cfg.intermediate_size),
            "up_proj": (cfg.hidden_size, cfg.intermediate_size),
            "down_proj": (cfg.intermediate_size, cfg.hidden_size),
        },
    )


def _map_name(name: str, fused: dict[str, tuple[str, int]]) -> tuple[str | None, int]:
    if name == "model.embed_tokens.weight":
        return "embed.weight", 0
    if name == "model.norm.weight":
        return "norm.weight", 0
    if name == "lm_head.weight":
        return "lm_head", 0
    parts = name.split(".")
    if len(parts) >= 5 and parts[0] == "model" and parts[1] == "layers":
        layer = parts[2]
        module = ".".join(parts[3:-1])
        kind = parts[-1]
        if module in fused:
            ours, offset = fused[module]
            return f"layers.{layer}.{ours}.{kind}", offset
    return None, 0


def _expected_keys(model: DecoderModel, fused: dict[str, tuple[str, int]]) -> set[str]:
    keys = {"embed.weight@0", "norm.weight@0"}
    if model.lm_head is not None:
        keys.add("lm_head@0")
    params = dict(model.named_parameters())
    for i in range(model.cfg.num_layers):
        for ours, offset in fused.values():
            for kind in ("weight", "bias"):
                if f"layers.{i}.{ours}.{kind}" in params:
                    keys.add(f"layers.{i}.{ours}.{kind}@{offset}")
    return keys
