"""Plain-PyTorch dequantize + matmul for 4-bit weights with 16-bit activations (w4a16).

The layout is GPTQ's packing with groups made contiguous: ``qweight`` ``[K // 8, N]`` int32 holds
eight 4-bit values per word, weight row ``k = 8 * i + j`` in bits ``4 * j .. 4 * j + 3`` of word
``i``; row k belongs to group ``k // group_size`` and ``w[k, n] = (q[k, n] - zeros[g, n]) *
scales[g, n]``. GPTQ's act-order (``desc_act``) scatters a group's rows over K; loaders sort the
rows by group once (``lorax_engine.quant.formats``) and keep the permutation ``perm``: row k of
the weight multiplies input column ``perm[k]``, so ``y = x[:, perm] @ w``. Contiguous groups let
the kernel read one scale row and one zero row per group instead of one per weight element.

Zeros are kept unpacked, as floats: loaders turn GPTQ's packed ``qzeros`` (stored minus one) and
AWQ's (interleaved) into this one form, so one kernel serves both formats.
"""

from __future__ import annotations

import torch

PACK = 8  # 4-bit values per int32 word


def unpack_rows(qweight: torch.Tensor) -> torch.Tensor:
    """``[K // 8, N]`` int32 -> ``[K, N]`` int32 values in ``0..15`` (GPTQ order along K)."""
    shifts = torch.arange(0, 32, 4, device=qweight.device, dtype=torch.int32)  # [8]
    q = (qweight.unsqueeze(1) >> shifts.view(1, PACK, 1)) & 0xF  # [K // 8, 8, N]
    return q.reshape(-1, qweight.shape[1])


def pack_rows(q: torch.Tensor) -> torch.Tensor:
    """Inverse of ``unpack_rows``: ``[K, N]`` values in ``0..15`` -> ``[K // 8, N]`` int32."""
    if q.shape[0] % PACK:
        raise ValueError(f"in_features {q.shape[0]} is not a multiple of {PACK}")
    shifts = torch.arange(0, 32, 4, device=q.device, dtype=torch.int32)
    words = q.to(torch.int32).reshape(-1, PACK, q.shape[1]) << shifts.view(1, PACK, 1)
    # The bit fields are disjoint, so a sum is an OR (and int32 wraps into the sign bit as GPTQ's).
    return words.sum(dim=1, dtype=torch.int32)


def dequantize_w4(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """The float32 weight ``[K, N]`` (input-major, as GPTQ stores it; ``F.linear`` wants ``.T``).

    scales, zeros: ``[ceil(K / group_size), N]``; row k is in group ``k // group_size``.
    """
    q = unpack_rows(qweight).float()  # [K, N]
    g = torch.arange(q.shape[0], device=q.device) // group_size  # [K]
    return (q - zeros.float()[g]) * scales.float()[g]


def w4a16_matmul_ref(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    perm: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """``x[:, perm] @ W``: x ``[M, K]`` -> ``[M, N]`` in x's dtype, computed in float32."""
    w = dequantize_w4(qweight, scales, zeros, group_size)  # [K, N]
    xf = x.float() if perm is None else x.float()[:, perm.long()]
    return (xf @ w).to(x.dtype)
