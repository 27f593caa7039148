"""Tensor parallelism on CPU: 2 shards over gloo give 1 process's greedy tokens (base model and a
batch of mixed adapters), a dead shard ends the engine instead of hanging it, and shard counts
that do not divide the model are refused with the dimension named."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lorax_engine.async_engine import AsyncEngine
from lorax_engine.distributed import TensorParallel, check_shardable, shard_config
from lorax_engine.distributed.lora import ShardWeights, shard_lora_weights
from lorax_engine.models.model_config import ModelConfig

sys.path.insert(0, str(Path(__file__).parent))
import tp_generate

SCRIPT = Path(__file__).parent / "tp_generate.py"
# Each process imports torch and loads the model; a hang is a failure, not a stuck CI job.
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tp-demo")


@pytest.fixture(scope="module")
def one_process_tokens(demo_cache: Path) -> list[list[int]]:
    """The reference, in this process (it also builds the demo checkpoint the shards load)."""

    async def run() -> list[list[int]]:
        engine = AsyncEngine.from_config(tp_generate.config(demo_cache, 1))
        try:
            return await tp_generate.generate(engine)
        finally:
            await engine.shutdown()

    return asyncio.run(run())


def _run_shards(demo_cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(demo_cache), "2", *extra],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def test_two_shards_give_the_same_greedy_tokens(
    demo_cache: Path, one_process_tokens: list[list[int]]
) -> None:
    done = _run_shards(demo_cache)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    tokens = result["tokens"]
    assert result["pending_steps"] > 0  # decode inputs sent from the device were covered
    # One prompt under base, pirate and shakespeare: the batch really mixes three models.
    base, pirate, shakespeare = one_process_tokens[:3]
    assert len({tuple(base), tuple(pirate), tuple(shakespeare)}) == 3
    assert tokens == one_process_tokens


def test_a_dead_shard_ends_the_engine(
    demo_cache: Path, one_process_tokens: list[list[int]]
) -> None:
    done = _run_shards(demo_cache, "--kill-worker")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "shard process lorax-shard-1 exited" in done.stderr


def _cfg(**overrides: int) -> ModelConfig:
    base = ModelConfig(
        architecture="llama",
        vocab_size=1001,
        hidden_size=64,
        intermediate_size=96,
        num_layers=2,
        num_heads=8,
        num_kv_heads=2,
        head_dim=8,
        rms_norm_eps=1e-6,
        max_position_embeddings=128,
    )
    return replace(base, **overrides)


def test_shard_counts_that_do_not_divide_are_refused() -> None:
    with pytest.raises(ValueError, match="num_key_value_heads=2"):
        check_shardable(_cfg(), 4)
    with pytest.raises(ValueError, match=r"divide intermediate_size=102 of") as err:
        check_shardable(_cfg(num_kv_heads=4, intermediate_size=102), 4)
    assert "heads" not in str(err.value)
    shard = shard_config(_cfg(), 2)
    # The vocabulary is padded to a multiple of the shard count instead.
    assert (shard.num_heads, shard.num_kv_heads, shard.intermediate_size) == (4, 1, 48)
    assert shard.vocab_size == 501


def test_lora_slices_recombine_to_the_whole_delta() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 16)
    a_col, b_col = torch.randn(4, 16), torch.randn(12, 4)  # column-parallel: q_proj
    a_row, b_row = torch.randn(4, 16), torch.randn(12, 4)  # row-parallel: o_proj

    weights = ShardWeights(4, 1.0, {(0, "q_proj"): (a_col, b_col), (0, "o_proj"): (a_row, b_row)})

    col_parts, row_sum = [], torch.zeros(3, 12)
    for rank in range(2):
        tp = TensorParallel(rank, 2, group=object())
        mods = shard_lora_weights(weights, tp).modules
        a, b = mods[(0, "q_proj")]
        col_parts.append(x @ a.T @ b.T)  # this shard's output rows
        a, b = mods[(0, "o_proj")]
        row_sum += x[:, rank * 8 : (rank + 1) * 8] @ a.T @ b.T  # summed over the shards
    torch.testing.assert_close(torch.cat(col_parts, dim=1), x @ a_col.T @ b_col.T)
    torch.testing.assert_close(row_sum, x @ a_row.T @ b_row.T)


def test_sharded_model_gives_the_whole_models_logits(tmp_path: Path) -> None:
    """Biases on every projection (row-parallel ones added once), tied embeddings and a vocabulary
    the shards do not divide (padded): two gloo shards give the unsharded model's logits."""
    import socket

    import tp_model_shard as tms

    cfg = replace(
        _cfg(), qkv_bias=True, o_bias=True, mlp_bias=True, tie_word_embeddings=True, num_heads=4
    )
    whole = tms.build_model(cfg, torch.float32, torch.device("cpu"), 64)
    whole.load_hf_weights(tms.hf_weights(cfg).items())
    with torch.inference_mode():
        expected = tms.batch_logits(whole)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = torch.multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=tms.shard_main, args=(rank, 2, port, cfg, tmp_path)) for rank in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=TIMEOUT_S)
        if p.exitcode is None:
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    for rank in (0, 1):  # every shard holds the gathered logits
        got = torch.load(tmp_path / f"logits{rank}.pt")
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
