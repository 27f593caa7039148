"""Which multi-LoRA kernels a batch runs: the fused per-token decode kernel, or the tiles."""

from __future__ import annotations

import itertools

# Up to this many rows ``lora_apply_`` may run the fused per-token kernel. It reads each token's
# adapter separately (repeats of one adapter come from L2), which beats the tile launches until
# batches are prefill-sized, for small ranks. Up to 256 rows it is as fast on the GPU; from 257 to
# 512 rows (the engine's eager mixed steps: a batch of decodes plus a prompt) it costs more GPU
# time, but those steps are host-bound and it is one launch a projection instead of two. H200,
# run 9, 128 decodes + a 256-token prompt on 128 adapters, Llama-3-8B: the step 53.8-57.3 ms with
# the tiles, 30.8-46.4 ms with the fused kernel (the base model's: 27.7-40.8). Since run 10 such
# steps replay CUDA graphs (no launch cost); there the two paths take the same GPU time (the same
# step 26.0 ms with the tiles, 26.1-26.3 with the fused kernel), so the limit stays.
DECODE_MAX_ROWS = 512
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


# The per-token kernel (``sgmv.decode_token``) instead of the fused one, for one slice at most
# this wide (two programs a token at rank 16) and this many rows. H200 sweep (run 11), µs,
# per-token against fused: 64 tokens on 64 rank-16 adapters 8.9 vs 13.1 (o_proj; run_all.py
# sgmv after: 9.2 vs 13.2, with PDL 7.6 vs 12.8), 16.2-16.8 vs 17.0 (down); rows 32 / 96 / 128:
# 7.9 vs 9.5, 14.9 vs 15.0, 16.3 vs 16.0; one row 6.4 vs 5.5. Fused q/k/v (19.6 vs 17.7) and
# gate/up (46.4 vs 28.6) lose: each N chunk re-reads its token's A.
TOKEN_MIN_ROWS = 17
TOKEN_MAX_ROWS = 96
TOKEN_MAX_WIDTH = 4096
# Where the per-token kernel loads a token's A whole (``decode_token.loads_a_whole``: a 4096-wide
# input at rank <= 16), it also wins below TOKEN_MIN_ROWS and on fused projections whose slices
# are at most TOKEN_MAX_WIDTH wide, and up to TOKEN_WIDE_MAX_ROWS rows on wider ones. Run 12, µs
# with PDL / plain launches, per-token against fused: o_proj (4096 -> 4096) one row 3.4 / 5.2 vs
# 5.4 / 5.7, 16 rows 3.6 / 6.0 vs 6.4 / 6.7; q/k/v (4096 -> 4096 + 1024 + 1024) one row 3.2 / 5.1
# vs 5.4 / 5.9, 16 rows 4.5 / 7.1 vs 10.5 / 10.3, 64 rows 13.9 / 17.3 vs 16.0 / 17.8, 96 rows
# 19.9 / 23.2 vs 21.7 / 23.9; gate/up (2 x 14336) 16 rows 11.0 / 13.7 vs 15.3 / 15.2, 32 rows
# 20.6 / 24.9 vs 20.7 / 20.6, 64 rows 38.2 vs 28.2 with PDL.
TOKEN_WIDE_MAX_ROWS = 16


def uses_token_kernel(
    rows: int, table_rank: int, slice_offsets: list[int], loads_a_whole: bool
) -> bool:
    """Whether a batch the fused kernel accepts (:func:`uses_fused_kernel`) runs the per-token
    kernel instead: the same result (bit for bit in 16-bit) in fewer µs for these shapes.
    ``loads_a_whole``: whether that kernel would load each token's A at once for these tables
    (:func:`lorax_kernels.sgmv.decode_token.loads_a_whole`; this module imports no Triton)."""
    if rows > TOKEN_MAX_ROWS or table_rank > FUSED_MAX_RANK:
        return False
    widths = [hi - lo for lo, hi in itertools.pairwise(slice_offsets)]
    narrow = max(widths) <= TOKEN_MAX_WIDTH
    if loads_a_whole:
        return narrow or rows <= TOKEN_WIDE_MAX_ROWS
    return len(widths) == 1 and narrow and rows >= TOKEN_MIN_ROWS
