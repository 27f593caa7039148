"""Which multi-LoRA path ``lora_apply_`` takes, from the H200 measurements (docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from lorax_kernels.sgmv import DECODE_MAX_ROWS, uses_fused_kernel


def test_small_ranks_take_the_fused_kernel_up_to_decode_sized_batches() -> None:
    for rank in (1, 8, 16):
        assert uses_fused_kernel(1, rank)
        assert uses_fused_kernel(64, rank)
        assert uses_fused_kernel(DECODE_MAX_ROWS, rank)
        assert not uses_fused_kernel(DECODE_MAX_ROWS + 1, rank)


def test_high_ranks_take_the_tiles_beyond_a_few_rows() -> None:
    # Rank 64 at 16 rows: fused 16.3 us, tiles 9.3 us; at 64 rows 28.0 vs 12.2 us.
    for rank in (32, 64, 128):
        assert uses_fused_kernel(1, rank)
        assert uses_fused_kernel(4, rank)
        assert not uses_fused_kernel(16, rank)
        assert not uses_fused_kernel(64, rank)


def test_narrow_projections_at_mid_sized_batches_take_the_per_token_kernel() -> None:
    # 64 tokens on 64 rank-16 adapters, 4096 -> 4096: per-token 8.9 us, fused 13.1 us.
    from lorax_kernels.sgmv.routing import uses_token_kernel

    o_proj, qkv, gate_up = [0, 4096], [0, 4096, 5120, 6144], [0, 14336, 28672]
    # From 17 rows either form of the kernel: A loaded whole (o_proj) or streamed (down_proj).
    for whole in (False, True):
        assert uses_token_kernel(64, 16, o_proj, whole)
        assert uses_token_kernel(17, 8, o_proj, whole)
        assert uses_token_kernel(96, 16, o_proj, whole)
        assert not uses_token_kernel(128, 16, o_proj, whole)
        assert not uses_token_kernel(64, 64, o_proj, whole)
        assert not uses_token_kernel(64, 16, gate_up, whole)
    assert not uses_token_kernel(16, 16, o_proj, False)  # 1 row: fused 5.5 us, the loop 6.4
    assert not uses_token_kernel(64, 16, qkv, False)  # the loop: 19.6 us, fused 17.7
    # A loaded whole (o_proj): one row 3.4 us with PDL against the fused kernel's 5.4.
    assert uses_token_kernel(1, 16, o_proj, True)
    assert uses_token_kernel(16, 16, o_proj, True)


def test_fused_projections_take_the_per_token_kernel_where_it_loads_a_whole() -> None:
    from lorax_kernels.sgmv.routing import uses_token_kernel

    qkv, gate_up = [0, 4096, 5120, 6144], [0, 14336, 28672]
    # q/k/v, slices <= 4096 wide: 64 rows 13.9 us with PDL against the fused kernel's 16.0.
    assert uses_token_kernel(1, 16, qkv, True)
    assert uses_token_kernel(96, 16, qkv, True)
    assert not uses_token_kernel(128, 16, qkv, True)
    # gate/up, 14336-wide slices (7 programs a slice, each reading A): 16 rows 11.0 vs 15.3 us,
    # 64 rows 38.2 vs 28.2.
    assert uses_token_kernel(16, 16, gate_up, True)
    assert not uses_token_kernel(17, 16, gate_up, True)
    assert not uses_token_kernel(1, 64, qkv, True)  # rank-64 tables: the fused kernel or tiles


def test_the_per_token_kernel_loads_a_whole_up_to_four_shrink_chunks() -> None:
    decode_token = pytest.importorskip("lorax_kernels.sgmv.decode_token")

    assert decode_token.loads_a_whole(4096, 16, [0, 4096])  # 4 chunks of 1024
    assert decode_token.loads_a_whole(4096, 8, [0, 4096])  # 2 chunks of 2048
    assert decode_token.loads_a_whole(40, 16, [0, 24])
    assert not decode_token.loads_a_whole(14336, 16, [0, 4096])  # down_proj: 14 chunks
    assert not decode_token.loads_a_whole(4096, 64, [0, 4096])  # 16 chunks of 256
