"""Which multi-LoRA path ``lora_apply_`` takes, from the H200 measurements (docs/benchmarks.md)."""

from __future__ import annotations

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
