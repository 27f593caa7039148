"""Fixtures: tiny random checkpoints of each architecture, built by transformers, with a real tokenizer."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from lorax_engine.demo import train_tokenizer

# --import-mode=importlib does not put test dirs on sys.path; our tests import engine_testkit.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _hf_config(arch: str, vocab: int) -> Any:
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 3,
    }
    if arch == "llama":
        return cast(Any, LlamaConfig)(
            **common,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=7)
    if arch == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    raise ValueError(arch)


_CACHE: dict[str, Path] = {}


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``make_checkpoint(arch)`` -> a directory with config, safetensors weights and a tokenizer."""

    def make(arch: str) -> Path:
        if arch in _CACHE:
            return _CACHE[arch]
        from transformers import AutoModelForCausalLM

        path = tmp_path_factory.mktemp(arch)
        vocab = train_tokenizer(path)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_hf_config(arch, vocab), dtype=torch.float32)
        with torch.no_grad():  # larger weights than the default init give peaky, tie-free logits
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.1)
        model.save_pretrained(str(path))
        _CACHE[arch] = path
        return path

    return make
