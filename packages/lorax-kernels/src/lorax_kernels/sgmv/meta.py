"""Per-step multi-LoRA batch metadata in fixed-size device buffers.

The SGMV kernels work on *tiles*: runs of at most ``block_m`` tokens that share one adapter slot.
``update_`` sorts the step's tokens by slot (stably, so tokens of one request stay in order) and
cuts every slot's run into tiles. Everything is computed on the device with fixed-size tensor ops
and written into buffers allocated once, so the update never reads a value back to the host and
can be recorded in a CUDA graph and replayed with new ``token_slots``. On CUDA the update is one
Triton launch (``sgmv.meta_triton``); the PyTorch version here runs elsewhere and is its oracle.
"""

from __future__ import annotations

import torch

# Slices (fused projections such as q/k/v or gate/up) one LoRA launch handles.
MAX_SLICES = 4


def sync_size(max_rows: int) -> int:
    """int32 counters the fused decode kernel (``sgmv.decode``) needs for ``max_rows`` rows."""
    return 1 + 2 * max_rows * MAX_SLICES


def scratch_size(num_slots: int, capacity: int) -> int:
    """int32 scratch the Triton ``update_`` (``sgmv.meta_triton``) needs: 3 counters per key
    (slot + 1) and one mark per tile."""
    return 3 * (num_slots + 1) + capacity


def max_tiles(num_tokens: int, num_slots: int, block_m: int) -> int:
    """Upper bound on the tiles for ``num_tokens`` tokens over ``num_slots`` slots (+ "none").

    Each of the at most ``min(num_tokens, num_slots + 1)`` non-empty runs can end in one partial
    tile; all other tiles are full.
    """
    return -(-num_tokens // block_m) + min(num_tokens, num_slots + 1)


class LoraBatchMeta:
    """Token → adapter-slot mapping of one step, in the tile layout the kernels consume.

    Allocate once with :meth:`allocate`, then call :meth:`update_` every step; every layer of the
    step reuses the result. Buffers (all int32, on ``device``):

    - ``token_slots``: ``[max_tokens]`` slot of each token, ``-1`` = no adapter.
    - ``sorted_ids``: ``[max_tokens]`` token indices ordered by slot.
    - ``tile_slot``: ``[tile_capacity]`` slot of each tile (``-1`` = tokens without adapter).
    - ``tile_start`` / ``tile_end``: ``[tile_capacity]`` the tile's range in ``sorted_ids``
      (``start == end`` for unused tiles).
    - ``scratch``: ``[scratch_size(num_slots, tile_capacity)]`` the Triton update's counters.
    - ``sync``: ``[sync_size(max_tokens)]`` zeros, the fused decode kernel's ticket and arrival
      counters; every launch leaves them zero again, so ``update_`` never touches them.
    """

    __slots__ = (
        "block_m",
        "device",
        "max_tokens",
        "num_slots",
        "num_tiles",
        "num_tokens",
        "scratch",
        "sorted_ids",
        "sync",
        "tile_end",
        "tile_slot",
        "tile_start",
        "token_slots",
    )

    def __init__(self, max_tokens: int, num_slots: int, device: torch.device, block_m: int) -> None:
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        if num_slots <= 0:
            raise ValueError(f"num_slots must be positive, got {num_slots}")
        if block_m < 16 or block_m & (block_m - 1):
            raise ValueError(f"block_m must be a power of two >= 16, got {block_m}")
        self.max_tokens = max_tokens
        self.num_slots = num_slots
        self.device = device
        self.block_m = block_m
        capacity = max_tiles(max_tokens, num_slots, block_m)
        i32 = {"dtype": torch.int32, "device": device}
        self.token_slots = torch.full((max_tokens,), -1, **i32)
        self.sorted_ids = torch.zeros(max_tokens, **i32)
        self.tile_slot = torch.full((capacity,), -1, **i32)
        self.tile_start = torch.zeros(capacity, **i32)
        self.tile_end = torch.zeros(capacity, **i32)
        self.sync = torch.zeros(sync_size(max_tokens), **i32)
        self.scratch = torch.zeros(scratch_size(num_slots, capacity), **i32)
        self.num_tokens = 0
        self.num_tiles = 0

    @classmethod
    def allocate(
        cls,
        max_tokens: int,
        num_slots: int,
        device: torch.device | str,
        block_m: int = 16,
    ) -> LoraBatchMeta:
        """Allocate buffers for up to ``max_tokens`` tokens per step over ``num_slots`` slots."""
        return cls(max_tokens, num_slots, torch.device(device), block_m)

    def update_(self, token_slots: torch.Tensor) -> None:
        """Map this step's tokens to slots. ``token_slots``: ``[num_tokens]`` int, ``-1`` = none.

        No host synchronisation; the number of tokens is the (static) length of ``token_slots``.
        Slots must lie in ``[-1, num_slots)``; this is not checked on the device. The whole tile
        table is rewritten, so the kernels may run over more rows than ``num_tokens`` (e.g. a CUDA
        graph captured for a larger bucket): rows past ``num_tokens`` have no adapter.
        """
        num_tokens = token_slots.shape[0]
        if token_slots.dim() != 1 or num_tokens > self.max_tokens:
            raise ValueError(
                f"token_slots must be 1-D with at most {self.max_tokens} entries, "
                f"got shape {tuple(token_slots.shape)}"
            )
        self.num_tokens = num_tokens
        self.num_tiles = max_tiles(num_tokens, self.num_slots, self.block_m)
        if num_tokens == 0:
            self.token_slots.fill_(-1)
            self.tile_start.zero_()
            self.tile_end.zero_()
        elif self.device.type == "cuda":
            self.update_triton_(token_slots)
        else:
            self.update_torch_(token_slots)

    def update_triton_(self, token_slots: torch.Tensor) -> None:
        """:meth:`update_` as one Triton launch for ``1 <= num_tokens``: the CUDA path (and, on
        the CPU, the interpreter's and the sm_90 compile check's)."""
        from lorax_kernels.sgmv.meta_triton import update_meta_

        update_meta_(
            token_slots.to(torch.int32).contiguous(),
            self.token_slots,
            self.sorted_ids,
            self.tile_slot,
            self.tile_start,
            self.tile_end,
            self.scratch,
            self.num_slots,
            self.block_m,
        )

    def update_torch_(self, token_slots: torch.Tensor) -> None:
        """:meth:`update_` in plain PyTorch (~20 small ops) for ``1 <= num_tokens``: the CPU
        path and the oracle of the Triton version."""
        num_tokens = token_slots.shape[0]
        self.token_slots[num_tokens:].fill_(-1)
        dev = self.device
        self.token_slots[:num_tokens].copy_(token_slots)
        # Segment key 0 = no adapter, k = slot k - 1.
        key = self.token_slots[:num_tokens].long() + 1  # [num_tokens]
        order = torch.sort(key, stable=True).indices  # [num_tokens]
        self.sorted_ids[:num_tokens].copy_(order)

        num_keys = self.num_slots + 1
        counts = torch.zeros(num_keys, dtype=torch.long, device=dev)
        counts.scatter_add_(0, key, torch.ones_like(key))  # [num_keys] tokens per key
        seg_start = torch.cumsum(counts, 0) - counts  # [num_keys] first sorted position
        tiles = (counts + self.block_m - 1) // self.block_m  # [num_keys] tiles per key
        tiles_end = torch.cumsum(tiles, 0)  # [num_keys]

        tile_ids = torch.arange(self.tile_slot.shape[0], device=dev)  # [capacity]
        seg = torch.searchsorted(tiles_end, tile_ids, right=True)  # [capacity] key of each tile
        used = seg < num_keys  # trailing tiles past the last run are empty
        seg = seg.clamp(max=num_keys - 1)
        first_tile = tiles_end[seg] - tiles[seg]
        start = seg_start[seg] + (tile_ids - first_tile) * self.block_m
        end = torch.minimum(start + self.block_m, seg_start[seg] + counts[seg])
        self.tile_slot.copy_(seg - 1)
        self.tile_start.copy_(torch.where(used, start, 0))
        self.tile_end.copy_(torch.where(used, end, 0))

    def tiles_for(self, num_rows: int) -> int:
        """Grid size (tiles) for a launch over ``num_rows`` rows, from static shapes only."""
        return min(max_tiles(num_rows, self.num_slots, self.block_m), self.tile_slot.shape[0])
