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
The kernel layout (``lorax_kernels.w4a16``) is GPTQ's qweight with zeros unpacked to floats and
groups contiguous along K (row k in group ``k // group_size``): a GPTQ weight without act-order
loads without repacking, an AWQ one is repacked once at load, and an act-order one has its rows
sorted by group once at load, keeping the permutation for the kernel to gather x's columns with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorax_engine.quant.spec import QuantSpec
from lorax_kernels.w4a16 import dequantize_w4, pack_rows, unpack_rows

# Nibble slot s of an AWQ word holds column AWQ_ORDER[s] of its block of 8 columns.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
GPTQ_TENSORS = ("qweight", "qzeros", "scales", "g_idx")
AWQ_TENSORS = ("qweight", "qzeros", "scales")


@dataclass(slots=True)
class W4Weight:
    """One 4-bit weight in the kernel layout: ``W[k, n] = (q - zeros[g]) * scales[g]`` with
    ``g = k // group_size``, and row k multiplying input ``perm[k]`` (act-order; None: input k).

    qweight ``[K // 8, N]`` int32; scales, zeros ``[G, N]`` floats; perm ``[K]`` int32 or None;
    ``group_size`` rows per group (K for one group).
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    perm: torch.Tensor | None
    group_size: int

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


def _group_rows(in_features: int, spec: QuantSpec) -> int:
    return in_features if spec.group_size == -1 else spec.group_size


def _check_groups(name: str, w: W4Weight, spec: QuantSpec) -> W4Weight:
    k, n = w.in_features, w.out_features
    groups = -(-k // w.group_size)
    if w.scales.shape != (groups, n) or w.zeros.shape != (groups, n):
        raise ValueError(
            f"{name}: scales {tuple(w.scales.shape)} do not match group_size {spec.group_size} "
            f"for a [{k} -> {n}] layer (expected {(groups, n)}); is quantization_config right?"
        )
    return w


def sort_groups(
    name: str, qweight: torch.Tensor, g_idx: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Make an act-order weight's groups contiguous: ``(qweight with rows sorted by group, perm)``.

    Row k of the sorted weight is input row ``perm[k]``; perm is None when g_idx is already
    ``k // group_size`` (no act-order: nothing moves). GPTQ gives group i // group_size to the
    i-th row it quantizes, so after a stable sort every group holds group_size rows.
    """
    k = qweight.shape[0] * 8
    expect = default_g_idx(k, group_size)
    if g_idx.shape != (k,):
        raise ValueError(f"{name}: g_idx has shape {tuple(g_idx.shape)}, expected ({k},)")
    if torch.equal(g_idx.cpu(), expect):
        return qweight, None
    perm = torch.argsort(g_idx.long(), stable=True)  # [K]
    if not torch.equal(g_idx[perm].cpu(), expect):
        raise ValueError(
            f"{name}: g_idx does not give each group {group_size} input rows (as GPTQ's "
            "act-order does); this checkpoint's grouping cannot be served"
        )
    return pack_rows(unpack_rows(qweight)[perm]), perm.to(torch.int32)


def gptq_to_w4(name: str, tensors: dict[str, torch.Tensor], spec: QuantSpec) -> W4Weight:
    """A GPTQ layer's tensors (keys ``GPTQ_TENSORS``; g_idx optional) in the kernel layout."""
    qweight = tensors["qweight"].to(torch.int32)
    k = qweight.shape[0] * 8
    zeros = unpack_cols(tensors["qzeros"].to(torch.int32)).float()
    if spec.zeros_minus_one:
        zeros += 1
    group = _group_rows(k, spec)
    perm = None
    if "g_idx" in tensors:
        qweight, perm = sort_groups(name, qweight, tensors["g_idx"].to(torch.int32), group)
    scales = tensors["scales"]
    w = W4Weight(qweight.contiguous(), scales, zeros[:, : scales.shape[1]], perm, group)
    return _check_groups(name, w, spec)


def awq_to_w4(name: str, tensors: dict[str, torch.Tensor], spec: QuantSpec) -> W4Weight:
    """An AWQ (GEMM) layer's tensors (keys ``AWQ_TENSORS``) in the kernel layout."""
    q = unpack_cols(tensors["qweight"].to(torch.int32), AWQ_ORDER)  # [K, N]
    if q.shape[0] % 8:
        raise ValueError(f"{name}: in_features {q.shape[0]} is not a multiple of 8")
    zeros = unpack_cols(tensors["qzeros"].to(torch.int32), AWQ_ORDER).float()
    w = W4Weight(pack_rows(q), tensors["scales"], zeros, None, _group_rows(q.shape[0], spec))
    return _check_groups(name, w, spec)


def fuse_w4(name: str, parts: list[W4Weight]) -> W4Weight:
    """Concatenate the slices of a fused projection (q|k|v, gate|up) along the output features.

    Slices share their input, so GPTQ's act-order gives them one permutation (it sorts inputs by
    the same activation statistics); a checkpoint where they differ cannot share one perm.
    """
    perm = parts[0].perm
    for p in parts[1:]:
        same = (p.perm is None and perm is None) or (
            p.perm is not None and perm is not None and torch.equal(p.perm, perm)
        )
        if not same:
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
        perm,
        parts[0].group_size,
    )


def dequantize(w: W4Weight) -> torch.Tensor:
    """The float32 weight in ``nn.Linear`` layout ``[N, K]`` (input rows in checkpoint order)."""
    sorted_rows = dequantize_w4(w.qweight, w.scales, w.zeros, w.group_size)  # [K, N]
    if w.perm is None:
        return sorted_rows.T.contiguous()
    rows = torch.empty_like(sorted_rows)
    rows[w.perm.long()] = sorted_rows
    return rows.T.contiguous()
