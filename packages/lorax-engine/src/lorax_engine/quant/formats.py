"""GPTQ and AWQ tensor formats, and their conversion to the one layout the w4a16 kernel reads.

GPTQ (AutoGPTQ / transformers' GPTQ quantizer) per linear layer, K inputs, N outputs:
  ``qweight`` ``[K // 8, N]`` int32, packed along K (row ``8i + j`` in bits ``4j`` of word i);
  ``qzeros`` ``[G, N // 8]`` int32, packed along N in the same sequential order, each zero
  stored minus one in the original ("gptq", v1) format; ``scales`` ``[G, N]`` fp16;
  ``g_idx`` ``[K]`` int32, the group of each input row (a permutation of ``k // group`` with
  act-order / ``desc_act``).
AWQ (AutoAWQ, GEMM version): ``qweight`` ``[K, N // 8]`` int32 packed along N, with column
  ``AWQ_ORDER[s]`` of each block of 8 in nibble slot ``s``; ``qzeros`` ``[G, N // 8]`` in the same
  order, zeros stored as they are; ``scales`` ``[G, N]``; no g_idx (groups are ``k // group``).
The kernel layout (``lorax_kernels.w4a16``) is GPTQ's qweight and g_idx with zeros unpacked to
floats, so a GPTQ weight loads without repacking and an AWQ one is repacked once at load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorax_engine.quant.spec import QuantSpec
from lorax_kernels.w4a16 import dequantize_w4, pack_rows

# Nibble slot s of an AWQ word holds column AWQ_ORDER[s] of its block of 8 columns.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
GPTQ_TENSORS = ("qweight", "qzeros", "scales", "g_idx")
AWQ_TENSORS = ("qweight", "qzeros", "scales")


@dataclass(slots=True)
class W4Weight:
    """One 4-bit weight in the kernel layout: ``W[k, n] = (q - zeros[g]) * scales[g]``, ``g = g_idx[k]``.

    qweight ``[K // 8, N]`` int32; scales, zeros ``[G, N]`` floats; g_idx ``[K]`` int32.
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor

    @property
    def in_features(self) -> int:
        return self.qweight.shape[0] * 8

    @property
    def out_features(self) -> int:
        return self.qweight.shape[1]


def unpack_cols(packed: torch.Tensor, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """``[R, N // 8]`` int32 packed along columns -> ``[R, N]`` values in ``0..15``.

    ``order``: the column each nibble slot holds (AWQ_ORDER); None is sequential (GPTQ qzeros).
    """
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    slots = (packed.unsqueeze(-1) >> shifts) & 0xF  # [R, N // 8, slot]
    if order is not None:
        inverse = torch.argsort(torch.tensor(order, device=packed.device))
        slots = slots[..., inverse]  # slot order -> column order
    return slots.reshape(packed.shape[0], -1)


def pack_cols(values: torch.Tensor, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Inverse of ``unpack_cols``: ``[R, N]`` values in ``0..15`` -> ``[R, N // 8]`` int32."""
    if values.shape[1] % 8:
        raise ValueError(f"{values.shape[1]} columns is not a multiple of 8")
    cols = values.to(torch.int32).reshape(values.shape[0], -1, 8)  # [R, N // 8, column]
    if order is not None:
        cols = cols[..., list(order)]  # column order -> slot order
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=values.device)
    return (cols << shifts).sum(dim=-1, dtype=torch.int32)  # disjoint bit fields: sum == OR


def default_g_idx(in_features: int, group_size: int) -> torch.Tensor:
    """``k // group_size`` for every input row (``group_size`` -1: all rows in group 0)."""
    group = in_features if group_size == -1 else group_size
    return (torch.arange(in_features) // group).to(torch.int32)


def _check_groups(name: str, w: W4Weight, spec: QuantSpec) -> W4Weight:
    k, n = w.in_features, w.out_features
    groups = 1 if spec.group_size == -1 else -(-k // spec.group_size)
    if w.scales.shape != (groups, n) or w.zeros.shape != (groups, n):
        raise ValueError(
            f"{name}: scales {tuple(w.scales.shape)} do not match group_size {spec.group_size} "
            f"for a [{k} -> {n}] layer (expected {(groups, n)}); is quantization_config right?"
        )
    if w.g_idx.shape != (k,) or int(w.g_idx.min()) < 0 or int(w.g_idx.max()) >= groups:
        raise ValueError(f"{name}: g_idx does not index the {groups} groups of {k} input rows")
    return w


def gptq_to_w4(name: str, tensors: dict[str, torch.Tensor], spec: QuantSpec) -> W4Weight:
    """A GPTQ layer's tensors (keys ``GPTQ_TENSORS``; g_idx optional) in the kernel layout."""
    qweight = tensors["qweight"].to(torch.int32)
    k = qweight.shape[0] * 8
    zeros = unpack_cols(tensors["qzeros"].to(torch.int32)).float()
    if spec.zeros_minus_one:
        zeros += 1
    g_idx = tensors.get("g_idx")
    g_idx = default_g_idx(k, spec.group_size) if g_idx is None else g_idx.to(torch.int32)
    scales = tensors["scales"]
    w = W4Weight(qweight.contiguous(), scales, zeros[:, : scales.shape[1]], g_idx)
    return _check_groups(name, w, spec)


def awq_to_w4(name: str, tensors: dict[str, torch.Tensor], spec: QuantSpec) -> W4Weight:
    """An AWQ (GEMM) layer's tensors (keys ``AWQ_TENSORS``) in the kernel layout."""
    q = unpack_cols(tensors["qweight"].to(torch.int32), AWQ_ORDER)  # [K, N]
    if q.shape[0] % 8:
        raise ValueError(f"{name}: in_features {q.shape[0]} is not a multiple of 8")
    zeros = unpack_cols(tensors["qzeros"].to(torch.int32), AWQ_ORDER).float()
    w = W4Weight(pack_rows(q), tensors["scales"], zeros, default_g_idx(q.shape[0], spec.group_size))
    return _check_groups(name, w, spec)


def fuse_w4(name: str, parts: list[W4Weight]) -> W4Weight:
    """Concatenate the slices of a fused projection (q|k|v, gate|up) along the output features.

    Slices share their input, so GPTQ's act-order gives them one permutation (it sorts inputs by
    the same activation statistics); a checkpoint where they differ cannot share one g_idx.
    """
    g_idx = parts[0].g_idx
    for p in parts[1:]:
        if not torch.equal(p.g_idx, g_idx):
            raise ValueError(
                f"{name}: the fused slices have different g_idx (act-order permutations); "
                "this engine fuses q/k/v and gate/up and needs them equal"
            )
        if p.scales.shape[0] != parts[0].scales.shape[0]:
            raise ValueError(f"{name}: the fused slices have different group counts")
    return W4Weight(
        torch.cat([p.qweight for p in parts], dim=1),
        torch.cat([p.scales for p in parts], dim=1),
        torch.cat([p.zeros for p in parts], dim=1),
        g_idx,
    )


def dequantize(w: W4Weight) -> torch.Tensor:
    """The float32 weight in ``nn.Linear`` layout ``[N, K]``."""
    return dequantize_w4(w.qweight, w.scales, w.zeros, w.g_idx).T.contiguous()
