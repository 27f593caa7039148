"""apply_token_bitmask_ against a plain loop, and MaskFiller against direct fills."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from lorax_engine.structured import (
    ConstraintFactory,
    MaskFiller,
    TokenConstraint,
    apply_token_bitmask_,
)


def _reference_apply(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> torch.Tensor:
    out = logits.clone()
    for mask_row, row in enumerate(rows):
        for token in range(logits.shape[1]):
            word, bit = divmod(token, 32)
            allowed = word < bitmask.shape[1] and (int(bitmask[mask_row, word]) >> bit) & 1
            if not allowed:
                out[row, token] = float("-inf")
    return out


@pytest.mark.parametrize(("vocab", "words"), [(33, 2), (64, 2), (100, 4), (70, 2)])
@pytest.mark.parametrize("rows", [None, [2], [0, 3, 1]])
def test_apply_matches_reference(vocab: int, words: int, rows: list[int] | None) -> None:
    gen = torch.Generator().manual_seed(vocab * 7 + words)
    logits = torch.randn((4, vocab), generator=gen)  # [batch, vocab]
    row_list = rows if rows is not None else [0, 1, 2, 3]
    bitmask = torch.randint(
        -(2**31), 2**31 - 1, (len(row_list), words), generator=gen, dtype=torch.int32
    )  # [rows, words]
    expected = _reference_apply(logits, bitmask, row_list)
    row_tensor = None if rows is None else torch.tensor(rows, dtype=torch.int64)
    apply_token_bitmask_(logits, bitmask, row_tensor)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


class _Scripted:
    """A TokenConstraint that allows one fixed token (and records which thread filled it)."""

    def __init__(self, token: int, fail: bool = False) -> None:
        self.token = token
        self.fail = fail

    def fill_allowed(self, bitmask: npt.NDArray[np.int32]) -> None:
        if self.fail:
            raise RuntimeError("grammar exploded")
        bitmask[:] = 0
        word, bit = divmod(self.token, 32)
        bitmask[word] = np.int32(np.uint32(1 << bit).view(np.int32))

    def accept(self, token_id: int) -> bool:
        return token_id == self.token

    def is_finished(self) -> bool:
        return False


def test_filler_masks_only_constrained_rows() -> None:
    filler = MaskFiller(mask_words=3, max_rows=8, num_threads=3)
    try:
        logits = torch.randn((9, 90))  # [batch, vocab]
        before = logits.clone()
        rows: list[tuple[int, TokenConstraint]] = [(r, _Scripted(r * 10 + 1)) for r in (1, 4, 5, 8)]
        filler.start(rows).apply_(logits)
        for r in range(9):
            finite = torch.isfinite(logits[r]).nonzero().flatten().tolist()
            if r in (1, 4, 5, 8):
                assert finite == [r * 10 + 1]
            else:
                assert torch.equal(logits[r], before[r])  # unconstrained: untouched
    finally:
        filler.close()


def test_filler_double_buffers_and_reports_errors() -> None:
    filler = MaskFiller(mask_words=1, max_rows=2, num_threads=2)
    try:
        first = filler.start([(0, _Scripted(3))])
        second = filler.start([(0, _Scripted(5))])
        assert int(first.wait()[0, 0]) == 1 << 3
        assert int(second.wait()[0, 0]) == 1 << 5
        with pytest.raises(RuntimeError, match="exploded"):
            filler.start([(0, _Scripted(1)), (1, _Scripted(2, fail=True))]).wait()
        with pytest.raises(ValueError, match="max_rows"):
            filler.start([(i, _Scripted(0)) for i in range(3)])
        empty = filler.start([])
        logits = torch.zeros((2, 32))
        empty.apply_(logits)
        assert torch.equal(logits, torch.zeros((2, 32)))
    finally:
        filler.close()


def test_filler_equals_direct_fill_for_real_constraints(
    bpe_tokenizer: PreTrainedTokenizerFast,
) -> None:
    factory = ConstraintFactory(bpe_tokenizer)
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 3}
    prefixes = ["", "[", "[1", "[1,", "[12,3", "[0,0,0"]
    constraints: list[TokenConstraint] = []
    for prefix in prefixes:
        c = factory.make({"type": "json_schema", "schema": schema})
        assert c is not None
        for t in bpe_tokenizer.encode(prefix, add_special_tokens=False):
            assert c.accept(t)
        constraints.append(c)
    expected = np.zeros((len(prefixes), factory.mask_words), dtype=np.int32)
    for c, row in zip(constraints, expected, strict=True):
        c.fill_allowed(row)
    # Exact width: one llguidance batch call; wider rows (a padded model vocabulary): the
    # row-by-row path, with the extra words zeroed.
    for extra_words in (0, 2):
        filler = (
            factory.mask_filler(max_rows=16)
            if extra_words == 0
            else MaskFiller(factory.mask_words + extra_words, max_rows=16, num_threads=3)
        )
        try:
            got = filler.start(list(enumerate(constraints))).wait().numpy().copy()
        finally:
            filler.close()
        np.testing.assert_array_equal(got[:, : factory.mask_words], expected)
        assert not got[:, factory.mask_words :].any()
    assert len({row.tobytes() for row in expected}) > 3  # the states really differ


@pytest.mark.gpu
def test_apply_on_cuda_matches_cpu() -> None:
    filler = MaskFiller(mask_words=4, max_rows=4, num_threads=2)
    try:
        logits = torch.randn((6, 120))  # [batch, vocab]
        rows: list[tuple[int, TokenConstraint]] = [(5, _Scripted(7)), (2, _Scripted(99))]
        on_gpu = logits.cuda()
        filler.start(rows).apply_(on_gpu)
        filler.start(rows).apply_(logits)
        torch.testing.assert_close(on_gpu.cpu(), logits, rtol=0, atol=0)
    finally:
        filler.close()
