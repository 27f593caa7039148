"""Read a PEFT LoRA adapter directory into validated :class:`LoraWeights`.

The directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` (PEFT's and Ludwig's
format). Pickled weights (``adapter_model.bin``) are refused: unpickling runs arbitrary code.
Every problem raises its own :class:`AdapterError` with a stable ``code``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from lorax_engine.adapters.errors import AdapterIncompatibleError, AdapterLoadError
from lorax_engine.adapters.peft_pack import pack_uniform
from lorax_engine.adapters.safetensors_file import (
    DTYPES,
    FileStat,
    SafetensorsFile,
    SafetensorsFormatError,
    TensorEntry,
)
from lorax_engine.adapters.weights import TARGET_ORDER, LoraWeights, ModuleKey, WeightsOrigin
from lorax_engine.lora.packed import pack_lora

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "adapter_model.ckpt")
# Where an adapter may ship its own chat template, in the order transformers looks.
TEMPLATE_NAMES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")
MAX_CONFIG_BYTES = 1 << 20

# base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight (an adapter name may follow A/B).
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_LLAMA_MODULE = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?layers\.(?P<layer>\d+)\.(?:self_attn|mlp)\.(?P<target>\w+)$"
)


class ModelSpecLike(Protocol):
    """The part of ``lorax_engine.lora.ModelLoraSpec`` that validation reads."""

    @property
    def architecture(self) -> str: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def targets(self) -> Mapping[str, tuple[int, int]]: ...


@dataclass(slots=True)
class LoadLimits:
    """Server limits an adapter must respect (``--max-lora-rank``, ``--max-adapter-bytes``)."""

    max_rank: int = 64
    max_bytes: int = 2 << 30

    def __post_init__(self) -> None:
        if self.max_rank <= 0:
            raise ValueError("max_rank must be positive")
        if self.max_bytes <= 0:
            raise ValueError("max_bytes must be positive")


def peft_origin(
    directory: Path, limits: LoadLimits, dtype: torch.dtype, *, display_name: str
) -> WeightsOrigin:
    """What the packed weights of the adapter in ``directory`` depend on, without reading them.

    Two ids whose origins are equal (the same weights file, unchanged, under the same config)
    would load to the same tensors, so the CPU tier may serve both from one copy. Raises what
    :func:`load_peft_lora` raises for the config and the file's presence and size.
    """
    config = _read_config(directory / CONFIG_NAME, display_name)
    _check_config(config, display_name, limits)
    path = _weights_path(directory, display_name, limits)
    return WeightsOrigin(FileStat.of(path, os.stat(path)), _digest(config), dtype)


def load_peft_lora(
    directory: Path,
    adapter_key: str,
    spec: ModelSpecLike,
    limits: LoadLimits,
    dtype: torch.dtype = torch.float32,
    *,
    display_name: str | None = None,
    pin: bool = False,
) -> LoraWeights:
    """Load and validate the adapter in ``directory`` for the model ``spec`` describes.

    The result is packed (one buffer, page-locked with ``pin``) and carries its
    :class:`WeightsOrigin`. Names, dtypes and shapes are checked from the file's header before
    any data is read; the data is read in one call and packed with a few whole-buffer operations
    when every module shares one rank, scale and dtype and every target covers every layer (the
    usual adapter), module by module otherwise (PEFT's ``rank_pattern``/``alpha_pattern``,
    ``layers_to_transform``, mixed dtypes).

    ``display_name`` names the adapter in error messages (its id, never a local cache path).
    """
    name = display_name or adapter_key
    config = _read_config(directory / CONFIG_NAME, name)
    default_rank, default_alpha, rslora = _check_config(config, name, limits)
    path = _weights_path(directory, name, limits)
    try:
        file = SafetensorsFile.open(path)
    except (SafetensorsFormatError, OSError) as exc:
        raise _unreadable(name, exc) from None
    for key, entry in file.entries.items():
        if entry.dtype not in DTYPES:
            raise AdapterLoadError(
                f"adapter {name!r}: tensor {key} has dtype {entry.dtype}, expected floating point",
                code="corrupt_weights",
            )
    pairs = _group_modules(file.entries, spec, name)

    rank_pattern: Mapping[str, Any] = config.get("rank_pattern") or {}
    alpha_pattern: Mapping[str, Any] = config.get("alpha_pattern") or {}
    ranks: dict[ModuleKey, int] = {}
    scales: dict[ModuleKey, float] = {}
    for key, (a, b) in pairs.items():
        module_name = f"model.layers.{key[0]}.{_block(key[1])}.{key[1]}"
        want_rank = int(_pattern_value(rank_pattern, module_name, default_rank))
        alpha = float(_pattern_value(alpha_pattern, module_name, default_alpha))
        in_features, out_features = spec.targets[key[1]]
        if a.shape != (want_rank, in_features) or b.shape != (out_features, want_rank):
            raise AdapterIncompatibleError(
                f"adapter {name!r} layer {key[0]} {key[1]}: A {a.shape} and B "
                f"{b.shape} do not fit the base model ({spec.architecture}: in_features "
                f"{in_features}, out_features {out_features}, rank {want_rank})",
                code="shape_mismatch",
            )
        if want_rank > limits.max_rank:
            raise AdapterIncompatibleError(
                f"adapter {name!r} has rank {want_rank}, above --max-lora-rank {limits.max_rank}",
                code="rank_too_large",
            )
        ranks[key] = want_rank
        scales[key] = alpha / math.sqrt(want_rank) if rslora else alpha / want_rank

    rank = max(ranks.values())
    # The adapter's scale is the config's default; modules on another scale are folded below.
    base_scale = default_alpha / math.sqrt(default_rank) if rslora else default_alpha / default_rank
    if len(set(scales.values())) == 1:
        base_scale = next(iter(scales.values()))
    try:
        data = file.read_data()  # [data section bytes] uint8
    except (SafetensorsFormatError, OSError) as exc:
        raise _unreadable(name, exc) from None
    _check_finite(data, file, name)
    origin = WeightsOrigin(file.stat, _digest(config), dtype)
    src_dtypes = {entry.dtype for pair in pairs.values() for entry in pair}
    uniform = set(ranks.values()) == {rank} and set(scales.values()) == {base_scale}
    if uniform and len(src_dtypes) == 1:
        src_dtype = DTYPES[src_dtypes.pop()]
        packed = pack_uniform(data, src_dtype, pairs, rank, base_scale, dtype, pin=pin)
        if packed is not None:
            return LoraWeights.from_packed(adapter_key, packed, origin)
    modules: dict[ModuleKey, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, (a_entry, b_entry) in pairs.items():
        a32 = _tensor(data, a_entry).to(torch.float32)
        b32 = _tensor(data, b_entry).to(torch.float32)
        if scales[key] != base_scale:
            # A per-module alpha/rank (PEFT patterns): fold the ratio into B so one scale serves all.
            b32 = b32 * (scales[key] / base_scale)
        pad = rank - ranks[key]
        if pad:
            a32 = torch.cat([a32, a32.new_zeros(pad, a32.shape[1])], dim=0)  # [rank, in]
            b32 = torch.cat([b32, b32.new_zeros(b32.shape[0], pad)], dim=1)  # [out, rank]
        modules[key] = (a32.to(dtype).contiguous(), b32.to(dtype).contiguous())
    packed = pack_lora(LoraWeights(adapter_key, rank, base_scale, modules), pin=pin)
    return LoraWeights.from_packed(adapter_key, packed, origin)


def _read_config(path: Path, name: str) -> dict[str, Any]:
    if not path.is_file():
        raise AdapterLoadError(f"adapter {name!r} has no {CONFIG_NAME}", code="missing_config")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterLoadError(
            f"adapter {name!r}: {CONFIG_NAME} is too large", code="corrupt_config"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterLoadError(
            f"adapter {name!r}: {CONFIG_NAME} is not valid JSON ({exc.__class__.__name__})",
            code="corrupt_config",
        ) from None
    if not isinstance(config, dict):
        raise AdapterLoadError(
            f"adapter {name!r}: {CONFIG_NAME} must be a JSON object", code="corrupt_config"
        )
    return config


def _check_config(
    config: Mapping[str, Any], name: str, limits: LoadLimits
) -> tuple[int, float, bool]:
    """Refuse what the runner cannot apply; return ``(r, lora_alpha, use_rslora)``."""
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterIncompatibleError(
            f"adapter {name!r} is a {peft_type} adapter; only LoRA is supported",
            code="unsupported_adapter_type",
        )
    for flag, what in (("use_dora", "DoRA"), ("use_qalora", "QA-LoRA")):
        if config.get(flag):
            raise AdapterIncompatibleError(
                f"adapter {name!r} uses {what}, which is not supported",
                code="unsupported_adapter_type",
            )
    if config.get("bias", "none") not in (None, "none"):
        raise AdapterIncompatibleError(
            f"adapter {name!r} trains biases (bias={config.get('bias')!r}); not supported",
            code="unsupported_target",
        )
    if config.get("modules_to_save"):
        raise AdapterIncompatibleError(
            f"adapter {name!r} saves full modules {list(config['modules_to_save'])}; only LoRA "
            "targets are supported",
            code="unsupported_target",
        )
    r, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise AdapterLoadError(
            f"adapter {name!r}: 'r' must be a positive integer", code="corrupt_config"
        )
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise AdapterLoadError(
            f"adapter {name!r}: 'lora_alpha' must be a number", code="corrupt_config"
        )
    patterns = config.get("rank_pattern") or {}
    if not isinstance(patterns, dict) or not isinstance(config.get("alpha_pattern") or {}, dict):
        raise AdapterLoadError(
            f"adapter {name!r}: rank_pattern/alpha_pattern must be objects", code="corrupt_config"
        )
    top = max([r, *(int(v) for v in patterns.values())])
    if top > limits.max_rank:
        raise AdapterIncompatibleError(
            f"adapter {name!r} has rank {top}, above --max-lora-rank {limits.max_rank}",
            code="rank_too_large",
        )
    return r, float(alpha), bool(config.get("use_rslora", False))


def _weights_path(directory: Path, name: str, limits: LoadLimits) -> Path:
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        if any((directory / p).exists() for p in PICKLE_NAMES):
            raise AdapterLoadError(
                f"adapter {name!r} ships only pickled weights; pickles are refused, save it with "
                "safetensors (PEFT save_pretrained(safe_serialization=True))",
                code="pickle_refused",
            )
        raise AdapterLoadError(f"adapter {name!r} has no {WEIGHTS_NAME}", code="missing_weights")
    size = weights_path.stat().st_size
    if size > limits.max_bytes:
        raise AdapterIncompatibleError(
            f"adapter {name!r} is {size} bytes, above the server's limit of {limits.max_bytes}",
            code="too_large",
        )
    return weights_path


def _digest(config: Mapping[str, Any]) -> str:
    """The config's content, for :class:`WeightsOrigin` (rank, alpha and patterns shape the
    packed weights; hashing all of it is simpler than listing which keys do)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _unreadable(name: str, exc: Exception) -> AdapterLoadError:
    return AdapterLoadError(
        f"adapter {name!r}: {WEIGHTS_NAME} is not a readable safetensors file "
        f"({exc.__class__.__name__}: {exc})",
        code="corrupt_weights",
    )


def _tensor(data: torch.Tensor, entry: TensorEntry) -> torch.Tensor:
    """A view of one tensor in the data section."""
    return data[entry.start : entry.end].view(DTYPES[entry.dtype]).view(entry.shape)


def _check_finite(data: torch.Tensor, file: SafetensorsFile, name: str) -> None:
    """Refuse NaN and infinity: one check over the whole data section when it holds one dtype;
    tensor by tensor otherwise, or to name the culprit once that check failed."""
    dtypes = {e.dtype for e in file.entries.values()}
    if len(dtypes) == 1:
        dtype = DTYPES[dtypes.pop()]
        whole = data[: data.numel() // dtype.itemsize * dtype.itemsize].view(dtype)  # [elements]
        # min and max propagate NaN and are infinite when an element is; one aminmax pass is
        # an order of magnitude faster than an isfinite mask on the CPU (bf16 especially).
        low, high = torch.aminmax(whole)
        if math.isfinite(float(low)) and math.isfinite(float(high)):
            return
    for key, entry in file.entries.items():
        if not bool(torch.isfinite(_tensor(data, entry)).all()):
            raise AdapterLoadError(
                f"adapter {name!r}: tensor {key} contains NaN or infinity", code="corrupt_weights"
            )


def _group_modules(
    entries: Mapping[str, TensorEntry], spec: ModelSpecLike, name: str
) -> dict[ModuleKey, tuple[TensorEntry, TensorEntry]]:
    halves: dict[ModuleKey, dict[str, TensorEntry]] = {}
    for key, entry in entries.items():
        m = _KEY.match(key)
        if m is None:
            raise AdapterIncompatibleError(
                f"adapter {name!r}: tensor {key} is not a LoRA A/B weight (embeddings, biases and "
                "DoRA magnitudes are not supported)",
                code="unsupported_target",
            )
        module = _LLAMA_MODULE.match(m["module"])
        if module is None:
            leaf = m["module"].rsplit(".", 1)[-1]
            if leaf in ("lm_head", "embed_tokens", "embed_out", "wte"):
                raise AdapterIncompatibleError(
                    f"adapter {name!r} targets {leaf}; supported targets are "
                    f"{', '.join(t for t in TARGET_ORDER if t in spec.targets)}",
                    code="unsupported_target",
                )
            raise AdapterIncompatibleError(
                f"adapter {name!r} was trained for a different architecture: module "
                f"{m['module']} does not exist in {spec.architecture}",
                code="architecture_mismatch",
            )
        layer, target = int(module["layer"]), module["target"]
        if target not in spec.targets:
            raise AdapterIncompatibleError(
                f"adapter {name!r} targets {target}; supported targets are "
                f"{', '.join(t for t in TARGET_ORDER if t in spec.targets)}",
                code="unsupported_target",
            )
        if layer >= spec.num_layers:
            raise AdapterIncompatibleError(
                f"adapter {name!r} has weights for layer {layer} but {spec.architecture} has "
                f"{spec.num_layers} layers",
                code="architecture_mismatch",
            )
        if len(entry.shape) != 2:
            raise AdapterLoadError(
                f"adapter {name!r}: tensor {key} must be 2-D, got {entry.shape}",
                code="corrupt_weights",
            )
        halves.setdefault((layer, target), {})[m["ab"]] = entry
    if not halves:
        raise AdapterLoadError(f"adapter {name!r} contains no LoRA weights", code="corrupt_weights")
    pairs: dict[ModuleKey, tuple[TensorEntry, TensorEntry]] = {}
    for key, ab in halves.items():
        if set(ab) != {"A", "B"}:
            missing = "B" if "A" in ab else "A"
            raise AdapterLoadError(
                f"adapter {name!r}: layer {key[0]} {key[1]} has no lora_{missing}",
                code="corrupt_weights",
            )
        pairs[key] = (ab["A"], ab["B"])
    return pairs


def _block(target: str) -> str:
    return "self_attn" if target in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"


def _pattern_value(patterns: Mapping[str, Any], module_name: str, default: float) -> float:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: a key matches a module name's suffix."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module_name):
            return float(value)
    return default


def read_chat_template(directory: Path, name: str) -> str | None:
    """The adapter's own chat template, or None when it ships none (the base model's applies).

    ``chat_template.jinja``, then ``chat_template.json`` / ``tokenizer_config.json``
    (``chat_template`` as a string, or a list of named templates of which ``default`` is used).
    """
    for file_name in TEMPLATE_NAMES:
        path = directory / file_name
        if not path.is_file():
            continue
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise AdapterLoadError(
                f"adapter {name!r}: {file_name} is too large", code="corrupt_config"
            )
        try:
            text = path.read_text(encoding="utf-8")
            if file_name.endswith(".jinja"):
                return text
            template = json.loads(text).get("chat_template")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            raise AdapterLoadError(
                f"adapter {name!r}: {file_name} is not valid", code="corrupt_config"
            ) from None
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str) and template:
            return template
    return None
