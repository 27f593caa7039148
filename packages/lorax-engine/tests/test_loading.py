"""Checkpoint loading: sharded safetensors, `.bin` refusal, config parsing across HF versions."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorax_engine.models.loader import iter_checkpoint, load_model
from lorax_engine.models.model_config import ModelConfig


def test_sharded_checkpoint_loads_the_same_weights(
    make_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    src = make_checkpoint("llama")
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, tmp_path / f.name)
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / shard))
    index = {"weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    a = load_model(src, torch.float32, torch.device("cpu"), 64)
    b = load_model(tmp_path, torch.float32, torch.device("cpu"), 64)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb
        assert torch.equal(pa, pb), na


def test_bin_weights_are_refused_unless_allowed(
    make_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    src = make_checkpoint("llama")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    torch.save(load_file(str(src / "model.safetensors")), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        list(iter_checkpoint(tmp_path))
    model = load_model(tmp_path, torch.float32, torch.device("cpu"), 64, allow_bin=True)
    assert model.cfg.architecture == "llama"


def test_missing_weights_are_an_error(
    make_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    src = make_checkpoint("llama")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    tensors = load_file(str(src / "model.safetensors"))
    tensors.pop("model.layers.1.mlp.down_proj.weight")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        load_model(tmp_path, torch.float32, torch.device("cpu"), 64)


BASE = {
    "model_type": "llama",
    "vocab_size": 100,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}


def test_rope_fields_old_and_new_style() -> None:
    old = ModelConfig.from_dict(
        {**BASE, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}
    )
    new = ModelConfig.from_dict(
        {**BASE, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}}
    )
    assert old.rope == new.rope
    assert old.rope.theta == 5e5
    assert old.num_kv_heads == 4  # defaults to the query heads
    assert old.head_dim == 16


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"model_type": "gpt2"}, "unsupported architecture"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling"),
        ({"num_key_value_heads": 3}, "multiple"),
        (
            {
                "model_type": "qwen2",
                "use_sliding_window": True,
                "sliding_window": 8,
                "max_window_layers": 1,
            },
            "per-layer",
        ),
    ],
)
def test_unsupported_configs_are_refused(extra: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_dict({**BASE, **extra})


def test_architecture_specifics() -> None:
    qwen = ModelConfig.from_dict({**BASE, "model_type": "qwen2", "tie_word_embeddings": True})
    assert qwen.qkv_bias
    assert not qwen.o_bias
    assert qwen.tie_word_embeddings
    mistral = ModelConfig.from_dict({**BASE, "model_type": "mistral", "sliding_window": 4096})
    assert mistral.sliding_window == 4096
    llama = ModelConfig.from_dict({**BASE, "eos_token_id": [1, 2]})
    assert llama.eos_token_ids == (1, 2)
    assert llama.sliding_window is None
