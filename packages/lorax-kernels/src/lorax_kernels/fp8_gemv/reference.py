"""Plain-PyTorch fp8 weight matmuls in float32: the GEMV's reference and per-token activation quant.

The weight is float8 e4m3 ``[N, K]`` (``nn.Linear`` layout) with one float32 scale per output
channel: ``W[n, k] = qweight[n, k] * scale[n]``.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
# Floor of a row's absmax, so an all-zero token gets a finite scale (and quantizes to zeros).
MIN_ABSMAX = 1e-12


def fp8_scale(amax: torch.Tensor) -> torch.Tensor:
    """``amax / 448``, the scale that maps ``amax`` onto e4m3's largest value, divided exactly on
    any device: CUDA divides by a Python number through its reciprocal, one ulp off for about half
    of bf16 amaxes (run 7), and a scale one ulp off sends quotients at a rounding midpoint to the
    other fp8 neighbour, so the GPU would store other fp8 values than the CPU from the same
    weights. Division by a 0-d tensor on ``amax``'s device is exact everywhere."""
    return amax / torch.full((), FP8_MAX, device=amax.device)


def fp8_linear_ref(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ W^T + bias``: x ``[M, K]`` -> ``[M, N]`` in x's dtype, computed in float32."""
    w = qweight.float() * scale.float()[:, None]  # [N, K]
    y = x.float() @ w.T  # [M, N]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def quantize_rows_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) fp8 quantization: ``(xq [M, K] e4m3, x_scale [M, 1] float32)``.

    ``x ≈ xq * x_scale``, each row scaled so its largest magnitude lands on FP8_MAX; one outlier
    token does not crush the others' precision.
    """
    xf = x.float()
    x_scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=MIN_ABSMAX) / FP8_MAX  # [M, 1]
    xq = (xf / x_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return xq, x_scale
