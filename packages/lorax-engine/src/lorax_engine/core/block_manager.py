"""KV-cache block allocation with reference counts and exact accounting."""

from __future__ import annotations

from collections import deque


class BlockManager:
    """Hands out fixed-size KV blocks; a block returns to the free list when its last owner lets go.

    Reference counts let several sequences share a block (prefix sharing); every block is either
    free (count 0, in the free list exactly once) or owned (count > 0, not in the free list).
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._ref_counts = [0] * num_blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        """How many blocks hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    def can_grow(self, block_ids: list[int], num_tokens: int) -> bool:
        """Whether ``block_ids`` can be extended to hold ``num_tokens`` tokens."""
        return self.blocks_for(num_tokens) - len(block_ids) <= len(self._free)

    def grow(self, block_ids: list[int], num_tokens: int) -> None:
        """Append fresh blocks to ``block_ids`` (in place) until it holds ``num_tokens`` tokens."""
        needed = self.blocks_for(num_tokens) - len(block_ids)
        if needed > len(self._free):
            raise RuntimeError(f"out of KV blocks: need {needed}, have {len(self._free)}")
        for _ in range(needed):
            block = self._free.popleft()
            self._ref_counts[block] = 1
            block_ids.append(block)

    def share(self, block_ids: list[int]) -> list[int]:
        """A second owner for the same blocks (the caller must not write into shared blocks)."""
        for block in block_ids:
            if self._ref_counts[block] <= 0:
                raise RuntimeError(f"sharing free block {block}")
            self._ref_counts[block] += 1
        return list(block_ids)

    def free(self, block_ids: list[int]) -> None:
        """Drop one reference to each block and empty ``block_ids`` (in place)."""
        for block in block_ids:
            count = self._ref_counts[block]
            if count <= 0:
                raise RuntimeError(f"double free of block {block}")
            self._ref_counts[block] = count - 1
            if count == 1:
                self._free.append(block)
        block_ids.clear()

    def check_invariants(self) -> None:
        """Raise if the free list and the reference counts disagree (used by the property tests)."""
        free = set(self._free)
        if len(free) != len(self._free):
            raise AssertionError("a block is in the free list twice")
        for block, count in enumerate(self._ref_counts):
            if count < 0 or (count == 0) != (block in free):
                raise AssertionError(f"block {block}: ref count {count}, free={block in free}")
