"""The mixed-step graphs' bucket arithmetic (the graphs themselves need CUDA: test_end_to_end.py)."""

from __future__ import annotations

from lorax_engine.core.mixed_graphs import (
    MAX_GRAPH_TOKENS,
    TOKEN_STEP,
    cheapest_from,
    token_buckets,
)


def test_buckets_step_up_to_the_graph_limit_or_the_step_budget() -> None:
    assert token_buckets(4096) == list(range(TOKEN_STEP, MAX_GRAPH_TOKENS + 1, TOKEN_STEP))
    assert token_buckets(TOKEN_STEP * 3 + 5) == [
        TOKEN_STEP,
        2 * TOKEN_STEP,
        3 * TOKEN_STEP,
        3 * TOKEN_STEP + 5,
    ]
    assert token_buckets(16) == [16]  # a budget under one step is its own bucket


def test_a_step_runs_as_the_cheapest_bucket_that_holds_it() -> None:
    # Bucket 2 is a slow GEMM row count: steps that fit it run as bucket 3, cheaper and larger.
    assert cheapest_from([1.0, 2.0, 5.0, 3.0, 4.0]) == [0, 1, 3, 3, 4]
    # Never a smaller bucket, and the smaller of two equal costs.
    assert cheapest_from([3.0, 1.0, 1.0]) == [1, 1, 2]
    assert cheapest_from([2.0]) == [0]
