"""A small round-to-nearest 4-bit quantizer that writes GPTQ and AWQ checkpoints.

It exists so tests (and anyone without AutoGPTQ/AutoAWQ at hand) can make a quantized checkpoint
from any small HF Llama-family checkpoint, byte-compatible with those formats (see
``formats``). It is not GPTQ's error-compensating algorithm: every weight is rounded to its
group's asymmetric min/max grid. With ``act_order`` the groups follow a permutation of the input
rows, shared by the projections that read the same input, as GPTQ's ``desc_act`` produces.
``dequantize_checkpoint`` writes the exact float weights a quantized checkpoint encodes, the
reference an engine serving it must match.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from lorax_engine.models.loader import iter_checkpoint
from lorax_engine.quant.formats import (
    AWQ_ORDER,
    AWQ_TENSORS,
    GPTQ_TENSORS,
    awq_to_w4,
    default_g_idx,
    dequantize,
    gptq_to_w4,
    pack_cols,
)
from lorax_engine.quant.spec import QuantSpec, resolve_quant_spec
from lorax_kernels.w4a16 import pack_rows

# Projections that are quantized, and the input they read (act-order permutations are per input).
PROJECTIONS = {
    "self_attn.q_proj": "attn_in",
    "self_attn.k_proj": "attn_in",
    "self_attn.v_proj": "attn_in",
    "self_attn.o_proj": "o_in",
    "mlp.gate_proj": "mlp_in",
    "mlp.up_proj": "mlp_in",
    "mlp.down_proj": "down_in",
}


def quantize_rtn(
    weight: torch.Tensor, group_size: int, g_idx: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``weight`` ``[N, K]`` to 4 bits: ``(q [K, N], scales [G, N] fp16, zeros [G, N], g_idx)``.

    Zero points are in ``1..15`` (never 0), so GPTQ's minus-one storage cannot wrap around.
    """
    w = weight.detach().float().T  # [K, N]
    k = w.shape[0]
    g_idx = default_g_idx(k, group_size) if g_idx is None else g_idx
    num_groups = int(g_idx.max()) + 1
    scales = torch.empty(num_groups, w.shape[1], dtype=torch.float16)
    zeros = torch.empty(num_groups, w.shape[1], dtype=torch.int32)
    q = torch.empty_like(w, dtype=torch.int32)
    for g in range(num_groups):
        rows = g_idx == g
        lo = w[rows].amin(dim=0).clamp(max=0)  # [N]; the grid always holds 0
        hi = w[rows].amax(dim=0).clamp(min=0)
        scale = ((hi - lo) / 15).clamp(min=1e-6).half()
        zero = torch.round(-lo / scale.float()).clamp(1, 15).to(torch.int32)
        scales[g], zeros[g] = scale, zero
        q[rows] = (torch.round(w[rows] / scale.float()) + zero).clamp(0, 15).to(torch.int32)
    return q, scales, zeros, g_idx


def _act_order_g_idx(k: int, group_size: int, seed: int) -> torch.Tensor:
    # GPTQ quantizes input rows in the order perm and gives row perm[i] the group i // group.
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[perm] = default_g_idx(k, group_size)
    return g_idx


def _split_name(name: str) -> tuple[int, str] | None:
    parts = name.split(".")
    if len(parts) < 6 or parts[:2] != ["model", "layers"] or parts[-1] != "weight":
        return None
    module = ".".join(parts[3:-1])
    return (int(parts[2]), module) if module in PROJECTIONS else None


def quantize_checkpoint(
    src: Path,
    dst: Path,
    method: str,
    group_size: int = 128,
    *,
    act_order: bool = False,
    seed: int = 0,
) -> Path:
    """Write ``src`` (an unquantized HF checkpoint dir) to ``dst`` as a GPTQ or AWQ checkpoint."""
    if method not in ("gptq", "awq"):
        raise ValueError("method must be gptq or awq")
    if act_order and method == "awq":
        raise ValueError("AWQ has no act-order")
    QuantSpec(method, bits=4, group_size=group_size)  # validates the group size
    dst.mkdir(parents=True, exist_ok=True)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in iter_checkpoint(src):
        hit = _split_name(name)
        if hit is None:
            out[name] = tensor.contiguous()
            continue
        layer, module = hit
        prefix = name.removesuffix(".weight")
        k = tensor.shape[1]
        g_idx = None
        if act_order:
            key = list(dict.fromkeys(PROJECTIONS.values())).index(PROJECTIONS[module])
            g_idx = _act_order_g_idx(k, group_size, seed * 1000 + layer * 10 + key)
        q, scales, zeros, g_idx = quantize_rtn(tensor, group_size, g_idx)
        out[f"{prefix}.scales"] = scales
        if method == "gptq":
            out[f"{prefix}.qweight"] = pack_rows(q)
            out[f"{prefix}.qzeros"] = pack_cols(zeros - 1)  # v1 format: zero minus one
            out[f"{prefix}.g_idx"] = g_idx
        else:
            out[f"{prefix}.qweight"] = pack_cols(q, AWQ_ORDER)
            out[f"{prefix}.qzeros"] = pack_cols(zeros, AWQ_ORDER)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    if method == "gptq":
        config["quantization_config"] = {
            "quant_method": "gptq",
            "bits": 4,
            "group_size": group_size,
            "desc_act": act_order,
            "sym": False,
            "checkpoint_format": "gptq",
        }
    else:
        config["quantization_config"] = {
            "quant_method": "awq",
            "bits": 4,
            "group_size": group_size,
            "zero_point": True,
            "version": "gemm",
        }
    _copy_side_files(src, dst, config)
    return dst


def dequantize_checkpoint(src: Path, dst: Path) -> Path:
    """Write the float32 checkpoint a GPTQ/AWQ checkpoint ``src`` encodes to ``dst``."""
    config = json.loads((src / "config.json").read_text())
    spec = resolve_quant_spec(None, config)
    if spec is None or spec.method not in ("gptq", "awq"):
        raise ValueError(f"{src} is not a GPTQ/AWQ checkpoint")
    names = GPTQ_TENSORS if spec.method == "gptq" else AWQ_TENSORS
    layers: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in iter_checkpoint(src):
        prefix, _, kind = name.rpartition(".")
        if kind in names:
            layers.setdefault(prefix, {})[kind] = tensor
        else:
            out[name] = tensor.float().contiguous()
    convert = gptq_to_w4 if spec.method == "gptq" else awq_to_w4
    for prefix, tensors in layers.items():
        out[f"{prefix}.weight"] = dequantize(convert(prefix, tensors, spec))
    dst.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    del config["quantization_config"]
    config["torch_dtype"] = "float32"
    _copy_side_files(src, dst, config)
    return dst


def _copy_side_files(src: Path, dst: Path, config: dict[str, object]) -> None:
    """Tokenizer and generation files as they are; config.json as given."""
    for f in src.iterdir():
        if (
            f.is_file()
            and f.suffix != ".safetensors"
            and f.name
            not in (
                "config.json",
                "model.safetensors.index.json",
            )
        ):
            shutil.copy2(f, dst / f.name)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
