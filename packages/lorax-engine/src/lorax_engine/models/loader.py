"""Resolve a ``--model-id`` (local dir, hub id, ``demo``) and load its weights into a DecoderModel."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from lorax_engine.distributed.parallel import TensorParallel
from lorax_engine.models.decoder import DecoderModel, LoraLinear
from lorax_engine.models.model_config import ModelConfig
from lorax_engine.models.rope import RotaryEmbedding
from lorax_engine.quant.spec import resolve_quant_spec

log = logging.getLogger(__name__)


def resolve_model_dir(
    model_id: str,
    *,
    revision: str | None = None,
    cache_dir: Path | None = None,
    allow_bin: bool = False,
) -> Path:
    """A local directory holding config.json, tokenizer and weights.

    ``demo`` builds the embedded demo checkpoint; an existing path is used as is; anything else is
    a hub id (``org/name`` or ``org/name@revision``) fetched with huggingface_hub (its cache and
    ``HF_TOKEN`` from the environment, progress bars shown).
    """
    if model_id == "demo":
        from lorax_engine.demo import build_demo

        return build_demo(cache_dir)
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    if "@" in model_id:
        model_id, revision = model_id.split("@", 1)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
    if allow_bin:
        patterns.append("*.bin")
    log.info("downloading %s (revision %s) from the hub", model_id, revision or "main")
    return Path(
        snapshot_download(model_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir)
    )


def iter_checkpoint(path: Path, *, allow_bin: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` from safetensors files (sharded or not); ``.bin`` only if allowed."""
    files = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [path / s for s in shards]
    if files:
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                    yield name, f.get_tensor(name)
        return
    bins = sorted(path.glob("*.bin"))
    if not bins:
        raise FileNotFoundError(f"no safetensors weights in {path}")
    if not allow_bin:
        raise ValueError(
            f"{path} has only .bin (pickle) weights, which can run arbitrary code when loaded; "
            "convert them to safetensors or pass --allow-bin-weights"
        )
    for file in bins:
        state = torch.load(file, map_location="cpu", weights_only=True)
        yield from state.items()


def build_model(
    cfg: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    *,
    quantized_projections: bool = False,
    tp: TensorParallel | None = None,
) -> DecoderModel:
    """An uninitialised model on ``device`` (parameters allocated, not filled).

    ``quantized_projections``: the projections get no 16-bit weight (the quantized loader gives
    them theirs), so it is never allocated. ``tp``: build only that shard's part.
    """
    with torch.device("meta"):
        model = DecoderModel(cfg, max_positions=1, tp=tp)
    if quantized_projections:
        for module in model.modules():
            if isinstance(module, LoraLinear):
                module.weight = None
    model = model.to(dtype=dtype).to_empty(device=device)
    # The rotary tables are derived data: rebuild them for real on the device, in float32.
    model.rotary = RotaryEmbedding(cfg.rope, cfg.head_dim, max_positions).to(device)
    return model.eval().requires_grad_(False)


def load_model(
    path: Path,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    *,
    allow_bin: bool = False,
    quantize: str | None = None,
    tp: TensorParallel | None = None,
) -> DecoderModel:
    """Build the model described by ``path/config.json`` and load its weights.

    ``quantize`` (one of ``quant.QUANTIZE_METHODS``) is checked against the checkpoint's
    ``quantization_config``; a GPTQ/AWQ checkpoint is served quantized without it. ``tp``: load
    only that shard's part.
    """
    spec = resolve_quant_spec(quantize, json.loads((path / "config.json").read_text()))
    if spec is not None and tp is not None and tp.size > 1:
        raise ValueError(
            "quantized weights (--quantize or a GPTQ/AWQ checkpoint) cannot be sharded"
        )
    if spec is not None:
        from lorax_engine.quant.load import load_quantized_model

        log.info("serving %s with %s quantization", path, spec.method)
        return load_quantized_model(path, spec, dtype, device, max_positions, allow_bin=allow_bin)
    cfg = ModelConfig.from_dir(path)
    model = build_model(cfg, dtype, device, max_positions, tp=tp)
    model.load_hf_weights(iter_checkpoint(path, allow_bin=allow_bin))
    return model


def init_random_(model: DecoderModel, seed: int = 0, std: float = 0.02) -> None:
    """Fill a model with random weights in place (benchmarks: a real shape without a download)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=gen)
