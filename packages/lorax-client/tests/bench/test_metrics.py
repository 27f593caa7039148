"""Percentiles and the run summary: the numbers of the results file."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorax.bench.metrics import RequestResult, percentile, summarize


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60),
    st.floats(0, 100),
)
def test_percentile_matches_numpy_linear(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-6)


def test_percentile_by_hand() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="q"):
        percentile(values, 101)


def _ok(index: int, sent: float, ttft: float, e2e: float, tokens: int) -> RequestResult:
    return RequestResult(
        index=index,
        adapter_id="a",
        input_len=10,
        output_len=tokens,
        scheduled_s=sent,
        sent_s=sent,
        ttft_s=ttft,
        e2e_s=e2e,
        output_tokens=tokens,
        prompt_tokens=11,
    )


def test_summary_counts_throughput_latency_and_slo() -> None:
    results = [
        _ok(0, sent=0.0, ttft=0.5, e2e=1.5, tokens=11),  # TPOT 0.1
        _ok(1, sent=1.0, ttft=1.0, e2e=3.0, tokens=5),  # TPOT 0.5, ends at 4.0
        _ok(2, sent=2.0, ttft=7.0, e2e=8.0, tokens=1),  # misses the SLO; no TPOT; ends at 10
        RequestResult(
            3,
            "b",
            10,
            4,
            scheduled_s=3.0,
            sent_s=3.0,
            error_type="generation",
            error="adapter b failed",
        ),
        RequestResult(4, "c", 10, 4, scheduled_s=4.0, sent_s=4.0, error_type="timeout"),
        RequestResult(
            5, "b", 10, 4, scheduled_s=5.0, sent_s=5.0, error_type="generation", error="again"
        ),
    ]
    results[1].output_len = 6  # asked 6, got 5
    s = summarize(results, slo_ttft_s=6.0)
    assert s["requests"] == {"issued": 6, "completed": 3, "failed": 3}
    assert s["duration_s"] == 10.0
    assert s["distinct_adapters"] == 3
    assert s["throughput"]["requests_per_s"] == pytest.approx(0.3)
    assert s["throughput"]["output_tokens_per_s"] == pytest.approx(1.7)
    assert s["throughput"]["total_tokens_per_s"] == pytest.approx(5.0)
    assert s["throughput"]["steady_output_tokens_per_s"] is None  # no token times recorded
    assert s["tokens"]["output"] == 17
    assert s["tokens"]["output_len_mismatch"] == 1
    assert s["tokens"]["prompt_len_error_mean"] == pytest.approx(1.0)
    assert s["ttft_s"]["p50"] == 1.0
    assert s["ttft_s"]["max"] == 7.0
    assert s["tpot_s"]["mean"] == pytest.approx(0.3)
    assert s["tpot_s"]["p50"] == pytest.approx(0.3)
    assert s["e2e_latency_s"]["p99"] == pytest.approx(3.0 + 5.0 * 0.98)
    assert s["slo"] == {"ttft_threshold_s": 6.0, "attained": 2, "attainment": pytest.approx(2 / 6)}
    assert s["errors"] == {"generation": 2, "timeout": 1}
    assert s["error_examples"] == {"generation": "adapter b failed", "timeout": ""}


def test_summary_of_a_run_where_everything_failed() -> None:
    results = [RequestResult(0, None, 5, 5, scheduled_s=0.0, sent_s=0.0, error_type="connection")]
    s = summarize(results, slo_ttft_s=6.0)
    assert s["requests"]["completed"] == 0
    assert s["throughput"]["requests_per_s"] == 0.0
    assert s["ttft_s"]["p99"] is None
    assert s["slo"]["attainment"] == 0.0
    assert s["errors"] == {"connection": 1}


def test_send_lag_excludes_the_concurrency_wait() -> None:
    late = _ok(0, sent=1.25, ttft=0.1, e2e=0.2, tokens=2)
    late.scheduled_s, late.client_wait_s = 0.5, 0.5
    s = summarize([late], slo_ttft_s=6.0)
    assert s["client"]["send_lag_s"]["max"] == pytest.approx(0.25)
    assert s["client"]["wait_s"]["max"] == pytest.approx(0.5)


def test_steady_rate_leaves_out_the_ramp_and_the_drain() -> None:
    """Two waves of requests: 10 tokens/s while eight stream together, then one straggler alone
    at 1 token/s for 20 s. The whole-run rate falls with the straggler's tail; the steady rate
    (between 10% and 90% of the token arrivals) stays the crowd's."""
    results = []
    for i in range(8):  # 8 requests, each 1.25 tokens/s for 40 s: 10 tokens/s together
        r = _ok(i, sent=0.0, ttft=0.8, e2e=40.0, tokens=50)
        r.token_times_s = [0.8 * (k + 1) for k in range(50)]
        results.append(r)
    tail = _ok(8, sent=0.0, ttft=40.0, e2e=60.0, tokens=20)
    tail.token_times_s = [40.0 + k for k in range(1, 21)]
    results.append(tail)
    s = summarize(results, slo_ttft_s=60.0)
    assert s["throughput"]["output_tokens_per_s"] == pytest.approx(420 / 60.0)
    assert s["throughput"]["steady_output_tokens_per_s"] == pytest.approx(10.0, rel=0.02)


def test_steady_rate_needs_enough_tokens() -> None:
    r = _ok(0, sent=0.0, ttft=0.1, e2e=1.0, tokens=10)
    r.token_times_s = [0.1 * k for k in range(1, 11)]
    assert summarize([r], slo_ttft_s=1.0)["throughput"]["steady_output_tokens_per_s"] is None
