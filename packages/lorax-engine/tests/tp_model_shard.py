"""Helpers of test_tensor_parallel.py that spawned shard processes import: random HF weights for a
config, and the logits of one fixed prefill + decode batch on a (sharded) DecoderModel."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from lorax_engine.core.kv_cache import allocate_kv_cache
from lorax_engine.distributed import TensorParallel
from lorax_engine.models.decoder import DecoderModel
from lorax_engine.models.forward_batch import ForwardBatch
from lorax_engine.models.loader import build_model
from lorax_engine.models.model_config import ModelConfig

BLOCK = 16
PROMPTS = [[5, 17, 99, 3, 1000, 42, 7], [8, 1, 650, 12, 77]]  # ids up to vocab - 1


def hf_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """HF-named random weights (with the biases the config asks for)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.1

    h, i, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.q_size, cfg.kv_size
    w = {"model.embed_tokens.weight": rand(cfg.vocab_size, h), "model.norm.weight": 1 + rand(h)}
    if not cfg.tie_word_embeddings:
        w["lm_head.weight"] = rand(cfg.vocab_size, h)
    for layer in range(cfg.num_layers):
        p = f"model.layers.{layer}."
        for name, (fout, fin) in {
            "self_attn.q_proj": (q, h),
            "self_attn.k_proj": (kv, h),
            "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, q),
            "mlp.gate_proj": (i, h),
            "mlp.up_proj": (i, h),
            "mlp.down_proj": (h, i),
        }.items():
            w[p + name + ".weight"] = rand(fout, fin)
            has_bias = (
                cfg.qkv_bias
                if name[-6:] in ("q_proj", "k_proj", "v_proj")
                else cfg.o_bias
                if name.endswith("o_proj")
                else cfg.mlp_bias
            )
            if has_bias:
                w[p + name + ".bias"] = rand(fout)
        w[p + "input_layernorm.weight"] = 1 + rand(h)
        w[p + "post_attention_layernorm.weight"] = 1 + rand(h)
    return w


def batch_logits(model: DecoderModel) -> torch.Tensor:
    """``[prompt tokens + decodes, vocab]``: a prefill of both prompts, then one decode each."""
    kv = allocate_kv_cache(model.shard_cfg, len(PROMPTS), BLOCK, torch.float32, torch.device("cpu"))
    ids = [t for p in PROMPTS for t in p]
    pos = [j for p in PROMPTS for j in range(len(p))]
    slots = [s * BLOCK + j for s, p in enumerate(PROMPTS) for j in range(len(p))]
    lens = [len(p) for p in PROMPTS]
    tables = torch.arange(len(PROMPTS), dtype=torch.int32).unsqueeze(1)  # one block each
    prefill = ForwardBatch(
        input_ids=torch.tensor(ids),
        positions=torch.tensor(pos),
        slot_mapping=torch.tensor(slots),
        block_tables=tables,
        seq_lens=torch.tensor(lens, dtype=torch.int32),
        query_start_loc=torch.tensor([0, lens[0], sum(lens)], dtype=torch.int32),
        is_decode=False,
    )
    out = [model.compute_logits(model(prefill, kv))]
    decode = ForwardBatch(
        input_ids=torch.tensor([4, 900]),
        positions=torch.tensor(lens),
        slot_mapping=torch.tensor([s * BLOCK + n for s, n in enumerate(lens)]),
        block_tables=tables,
        seq_lens=torch.tensor(lens, dtype=torch.int32) + 1,
        query_start_loc=torch.arange(len(PROMPTS) + 1, dtype=torch.int32),
        is_decode=True,
    )
    out.append(model.compute_logits(model(decode, kv)))
    return torch.cat(out)


def shard_main(rank: int, world: int, port: int, cfg: ModelConfig, out: Path) -> None:
    """A spawned shard: join the gloo group, load its part of the weights, save its logits."""
    torch.set_num_threads(1)
    store = dist.TCPStore(  # pyright: ignore[reportPrivateImportUsage]
        "127.0.0.1", port, world, is_master=rank == 0, wait_for_workers=False
    )
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        tp = TensorParallel(rank, world, dist.group.WORLD)
        model = build_model(cfg, torch.float32, torch.device("cpu"), 64, tp=tp)
        model.load_hf_weights(hf_weights(cfg).items())
        with torch.inference_mode():
            torch.save(batch_logits(model), out / f"logits{rank}.pt")
        # Rank 0 hosts the store: no rank may tear down while a peer still talks to it (gloo
        # aborts the process when a connection drops mid-use).
        dist.barrier()
    finally:
        dist.destroy_process_group()
