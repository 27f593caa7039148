"""GPTQ / AWQ tensor formats: packing orders, zero storage, conversion, and start-up checks."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lorax_engine.quant import QuantSpec, resolve_quant_spec
from lorax_engine.quant.formats import (
    AWQ_ORDER,
    W4Weight,
    awq_to_w4,
    dequantize,
    fuse_w4,
    gptq_to_w4,
    pack_cols,
    unpack_cols,
)
from lorax_engine.quant.quantizer import quantize_rtn
from lorax_kernels.w4a16 import pack_rows, w4a16_matmul

GPTQ = QuantSpec("gptq", bits=4, group_size=128, zeros_minus_one=True)
AWQ = QuantSpec("awq", bits=4, group_size=128)


def test_awq_nibble_order() -> None:
    """Column AWQ_ORDER[s] of each block of 8 sits in nibble slot s: 0 2 4 6 1 3 5 7."""
    values = torch.arange(16, dtype=torch.int32).remainder(8).view(1, 16)  # column j holds j % 8
    word = int(pack_cols(values, AWQ_ORDER)[0, 0]) & 0xFFFFFFFF
    assert [(word >> (4 * s)) & 0xF for s in range(8)] == [0, 2, 4, 6, 1, 3, 5, 7]
    assert torch.equal(unpack_cols(pack_cols(values, AWQ_ORDER), AWQ_ORDER), values)
    sequential = int(pack_cols(values)[0, 0]) & 0xFFFFFFFF  # GPTQ qzeros: plain order
    assert [(sequential >> (4 * s)) & 0xF for s in range(8)] == list(range(8))


def _weight(n: int = 24, k: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_rtn_error_is_at_most_half_a_step() -> None:
    w = _weight()
    q, scales, zeros, g_idx = quantize_rtn(w, 128)
    assert scales.shape == (2, 24)  # group 128 over 256 inputs
    deq = dequantize(W4Weight(pack_rows(q), scales, zeros.float(), None, 128))  # [N, K]
    step = scales.float()[g_idx.long()].T  # [N, K]
    assert ((deq - w).abs() <= step / 2 + 1e-6).all()


def test_gptq_and_awq_tensors_decode_to_the_same_weight() -> None:
    w = _weight()
    q, scales, zeros, g_idx = quantize_rtn(w, 128)
    expect = dequantize(W4Weight(pack_rows(q), scales, zeros.float(), None, 128))
    gptq = {
        "qweight": pack_rows(q),
        "qzeros": pack_cols(zeros - 1),  # v1: stored minus one
        "scales": scales,
        "g_idx": g_idx,
    }
    awq = {
        "qweight": pack_cols(q, AWQ_ORDER),
        "qzeros": pack_cols(zeros, AWQ_ORDER),
        "scales": scales,
    }
    assert gptq["qweight"].shape == (32, 24)  # [K // 8, N]
    assert awq["qweight"].shape == (256, 3)  # [K, N // 8]
    torch.testing.assert_close(dequantize(gptq_to_w4("l", gptq, GPTQ)), expect)
    torch.testing.assert_close(dequantize(awq_to_w4("l", awq, AWQ)), expect)
    # gptq_v2 stores the zeros as they are.
    v2 = QuantSpec("gptq", bits=4, group_size=128)
    gptq_v2 = {**gptq, "qzeros": pack_cols(zeros)}
    torch.testing.assert_close(dequantize(gptq_to_w4("l", gptq_v2, v2)), expect)


def test_wrong_group_size_and_fused_act_order_mismatch_are_refused() -> None:
    q, scales, zeros, g_idx = quantize_rtn(_weight(), 128)
    tensors = {"qweight": pack_rows(q), "qzeros": pack_cols(zeros - 1), "scales": scales}
    with pytest.raises(ValueError, match="group_size 64"):
        gptq_to_w4("l", tensors, QuantSpec("gptq", bits=4, group_size=64))
    a = gptq_to_w4("l", {**tensors, "g_idx": g_idx}, GPTQ)
    b = gptq_to_w4("l", {**tensors, "g_idx": g_idx.flip(0)}, GPTQ)
    with pytest.raises(ValueError, match="different g_idx"):
        fuse_w4("qkv", [a, b])
    assert fuse_w4("qkv", [a, a]).out_features == 48


def test_act_order_rows_are_sorted_by_group_and_x_is_gathered() -> None:
    """An act-order GPTQ weight is stored with its groups contiguous (the kernel reads one scale
    row per group) and a permutation of x's columns; it computes the checkpoint's weight."""
    w = _weight(k=256)
    g_idx = torch.empty(256, dtype=torch.int32)
    g_idx[torch.randperm(256, generator=torch.Generator().manual_seed(5))] = (
        torch.arange(256, dtype=torch.int32) // 64
    )
    q, scales, zeros, g_idx = quantize_rtn(w, 64, g_idx)
    tensors = {
        "qweight": pack_rows(q),
        "qzeros": pack_cols(zeros - 1),
        "scales": scales,
        "g_idx": g_idx,
    }
    spec = QuantSpec("gptq", bits=4, group_size=64, desc_act=True, zeros_minus_one=True)
    w4 = gptq_to_w4("l", tensors, spec)
    assert w4.perm is not None
    assert w4.group_size == 64
    assert torch.equal(g_idx[w4.perm.long()], torch.arange(256, dtype=torch.int32) // 64)
    # The checkpoint's weight, by GPTQ's own formula on the unsorted rows.
    g = g_idx.long()
    expect = ((q.float() - zeros.float()[g]) * scales.float()[g]).T  # [N, K]
    torch.testing.assert_close(dequantize(w4), expect)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(6))
    y = w4a16_matmul(x, w4.qweight, w4.scales.float(), w4.zeros, w4.perm, w4.group_size)
    torch.testing.assert_close(y, x @ expect.T, rtol=1e-4, atol=1e-4)
    # Without act-order nothing moves.
    plain = gptq_to_w4("l", {**tensors, "g_idx": torch.arange(256, dtype=torch.int32) // 64}, spec)
    assert plain.perm is None
    assert torch.equal(plain.qweight, tensors["qweight"])


def test_g_idx_with_uneven_groups_is_refused() -> None:
    q, scales, zeros, _ = quantize_rtn(_weight(), 128)
    g_idx = torch.zeros(256, dtype=torch.int32)
    g_idx[:100] = 1  # group 1 gets 100 rows, group 0 gets 156
    tensors = {"qweight": pack_rows(q), "qzeros": pack_cols(zeros - 1), "scales": scales}
    with pytest.raises(ValueError, match="each group 128 input rows"):
        gptq_to_w4("l", {**tensors, "g_idx": g_idx}, GPTQ)


def _qc(**kw: Any) -> dict[str, Any]:
    return {"quantization_config": kw}


@pytest.mark.parametrize(
    ("flag", "config", "match"),
    [
        ("awq", _qc(quant_method="gptq", bits=4, group_size=128), "does not match"),
        ("fp8", _qc(quant_method="gptq", bits=4, group_size=128), "does not match"),
        ("gptq", {}, "no quantization_config"),
        (None, _qc(quant_method="gptq", bits=8, group_size=128), "only 4-bit"),
        (None, _qc(quant_method="gptq", bits=4, group_size=100), "group_size 100"),
        (None, _qc(quant_method="awq", bits=4, group_size=128, version="gemv"), "GEMM"),
        (None, _qc(quant_method="bitsandbytes", load_in_4bit=True), "cannot load"),
        ("int3", {}, "use one of"),
    ],
)
def test_bad_combinations_fail_with_a_clear_message(
    flag: str | None, config: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_quant_spec(flag, config)


def test_detection_from_the_checkpoint() -> None:
    assert resolve_quant_spec(None, {}) is None
    assert resolve_quant_spec("fp8", {}) == QuantSpec("fp8")
    gptq = resolve_quant_spec(None, _qc(quant_method="gptq", bits=4, group_size=-1, desc_act=True))
    assert gptq == QuantSpec("gptq", 4, -1, desc_act=True, zeros_minus_one=True)
    awq = resolve_quant_spec("awq", _qc(quant_method="awq", w_bit=4, q_group_size=64))
    assert awq == QuantSpec("awq", 4, 64)


def test_cli_flag_reaches_the_config() -> None:
    from lorax_engine.cli import build_parser, config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args(["serve", "--quantize", "fp8"])).quantize == "fp8"
    assert config_from_args(parser.parse_args(["serve"])).quantize is None
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--quantize", "nf4"])
