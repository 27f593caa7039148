"""Tiny random Llama checkpoints and PEFT-made adapters, built in temp dirs (no hub)."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Spec:
    """Stands in for lorax_engine.lora.ModelLoraSpec (the same three fields)."""

    architecture: str
    num_layers: int
    targets: dict[str, tuple[int, int]] = field(default_factory=dict[str, tuple[int, int]])


def llama_config(hidden: int = 32, layers: int = 2) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=96,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )


def base_model(hidden: int = 32, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(llama_config(hidden, layers)).eval()


def spec_for(hidden: int = 32, layers: int = 2) -> Spec:
    """The shapes of ``llama_config(hidden, layers)``: 4 query heads, 2 KV heads."""
    h, i, kv = hidden, 2 * hidden, 2 * (hidden // 4)
    return Spec(
        "LlamaForCausalLM",
        layers,
        {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        },
    )


@pytest.fixture
def spec() -> Spec:
    return spec_for()


def make_peft_adapter(
    directory: Path,
    *,
    r: int = 8,
    alpha: int = 16,
    targets: Sequence[str] = ALL_TARGETS,
    seed: int = 1,
    hidden: int = 32,
    layers: int = 2,
    **lora_kwargs: Any,
) -> PeftModel:
    """A PEFT LoRA adapter with random A and nonzero B, saved as safetensors into ``directory``."""
    model = base_model(hidden, layers)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(targets),
        init_lora_weights=False,  # random B too: a zero B would hide every mistake
        **lora_kwargs,
    )
    with peft_quiet():
        peft_model = get_peft_model(model, config)
        peft_model.save_pretrained(str(directory), save_embedding_layers=False)
    return peft_model  # type: ignore[return-value]


def save_adapter_for(ckpt: Path, out: Path, seed: int, **config: Any) -> None:
    """A PEFT adapter for the checkpoint at ``ckpt`` (random A and B, visible delta) in ``out``."""
    model: Any = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32)
    torch.manual_seed(seed)
    with peft_quiet():
        peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **config))
        with torch.no_grad():  # a visible delta, so a wrong adapter changes the tokens
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.3)
        peft_model.save_pretrained(str(out))


@pytest.fixture
def make_adapter(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1_000_000))

    def make(name: str | None = None, **kwargs: Any) -> Path:
        directory = tmp_path / (name or f"adapter{next(counter)}")
        make_peft_adapter(directory, **kwargs)
        return directory

    return make


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.contextmanager
def peft_quiet() -> Iterator[None]:
    """PEFT reads a transformers property that this transformers deprecates: not our warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield


# ---- S3: moto in server mode, a real S3 HTTP API on 127.0.0.1 -------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> Any:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    name = "adapters-" + request.node.name.lower().replace("_", "-")[:40]
    client.create_bucket(Bucket=name)
    return client, name


def upload_dir(client: Any, bucket: str, prefix: str, directory: Path) -> None:
    """Upload every file of ``directory`` under ``prefix/``."""
    for f in directory.iterdir():
        client.upload_file(str(f), bucket, f"{prefix}/{f.name}")
