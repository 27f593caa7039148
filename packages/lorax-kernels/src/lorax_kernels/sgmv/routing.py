"""Which multi-LoRA kernels a batch runs: the fused per-token decode kernel, or the tiles."""

from __future__ import annotations

# Up to this many rows ``lora_apply_`` may run the fused per-token kernel. It reads each token's
# adapter separately (repeats of one adapter come from L2), which beats the three tile launches
# until batches are prefill-sized, for small ranks.
DECODE_MAX_ROWS = 256
# Above this table rank the fused kernel only runs for a handful of rows. Measured on the H200
# (docs/benchmarks.md, one 4096x4096 projection): at rank 8 and 16 it is within 40% of the tiles
# or faster at every row count up to 256 (15.2 vs 16.4 us at 64 tokens on 64 adapters), but at
# rank 64 it is 1.8x slower than the tiles at 16 rows and 2-3.6x slower from 64 rows on.
FUSED_MAX_RANK = 16
FUSED_MAX_ROWS_HIGH_RANK = 4


def uses_fused_kernel(rows: int, table_rank: int) -> bool:
    """Whether ``lora_apply_`` runs the fused one-launch kernel for ``rows`` tokens over slot
    tables of max rank ``table_rank`` (else shrink then expand over the tiles)."""
    if rows > DECODE_MAX_ROWS:
        return False
    return table_rank <= FUSED_MAX_RANK or rows <= FUSED_MAX_ROWS_HIGH_RANK
