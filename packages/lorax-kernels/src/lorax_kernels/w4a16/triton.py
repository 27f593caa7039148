"""Triton w4a16 GEMM: ``x @ W`` with W dequantized from 4-bit in registers, tile by tile.

One program computes a ``[BLOCK_M, BLOCK_N]`` tile of the output. Per ``BLOCK_K`` step it loads
the packed words of those input rows (each word is read by the 8 rows it holds; they hit the same
cache line), shifts out each row's nibble, looks up the row's group through ``g_idx`` (so GPTQ's
act-order costs nothing extra), and dequantizes before ``tl.dot``. The weight thus crosses memory
once at 4 bits, which is what makes decode (small M, memory bound) faster than 16-bit weights.
The same kernel serves decode (M = 1, the tile rows past M are masked) and prefill.
"""

# Triton's launch syntax (kernel[grid](..., num_warps=...)) and constexpr parameters are not
# typed in a way pyright understands.
# pyright: reportCallIssue=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _w4a16_kernel(
    x_ptr,
    qw_ptr,
    s_ptr,
    z_ptr,
    g_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_qk,
    stride_sg,
    stride_ym,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IS_FP32: tl.constexpr,
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    m_mask = rm < M
    n_mask = rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        k_mask = rk < K
        x = tl.load(
            x_ptr + rm[:, None] * stride_xm + rk[None, :],
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )  # [BLOCK_M, BLOCK_K]
        kn_mask = k_mask[:, None] & n_mask[None, :]
        words = tl.load(
            qw_ptr + (rk // 8)[:, None] * stride_qk + rn[None, :], mask=kn_mask, other=0
        )
        q = (words >> ((rk % 8) * 4)[:, None]) & 0xF  # [BLOCK_K, BLOCK_N]
        g = tl.load(g_ptr + rk, mask=k_mask, other=0)  # [BLOCK_K]
        s = tl.load(s_ptr + g[:, None] * stride_sg + rn[None, :], mask=kn_mask, other=0.0)
        z = tl.load(z_ptr + g[:, None] * stride_sg + rn[None, :], mask=kn_mask, other=0.0)
        w = (q.to(tl.float32) - z.to(tl.float32)) * s.to(tl.float32)  # [BLOCK_K, BLOCK_N]
        if IS_FP32:
            acc += tl.dot(x, w, input_precision="ieee")
        else:
            # 16-bit activations: round the weight to their dtype and use the tensor cores.
            acc += tl.dot(x, w.to(x.dtype))
    tl.store(
        y_ptr + rm[:, None] * stride_ym + rn[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=m_mask[:, None] & n_mask[None, :],
    )


def w4a16_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    g_idx: torch.Tensor,
) -> torch.Tensor:
    """Triton version of ``reference.w4a16_matmul_ref`` (same arguments, already validated)."""
    m, k = x.shape
    n = qweight.shape[1]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    if m == 0:
        return y
    if x.stride(1) != 1:
        x = x.contiguous()
    # Decode batches are a few rows: a 16-row tile (tl.dot's minimum) and wider N tiles keep
    # enough programs in flight to stream the weight; prefill takes square-ish tiles.
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    block_n = 64
    block_k = 32
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _w4a16_kernel[grid](
        x,
        qweight,
        scales,
        zeros,
        g_idx,
        y,
        m,
        n,
        k,
        x.stride(0),
        qweight.stride(0),
        scales.stride(0),
        y.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        IS_FP32=x.dtype == torch.float32,
        num_warps=4,
    )
    return y
