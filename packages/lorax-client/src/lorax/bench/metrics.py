"""What one request measured, and the summary of a run (the numbers in the results file).

Definitions (the usual ones of vLLM's and S-LoRA's benchmarks):

- TTFT: from sending the request to the first token event.
- TPOT: ``(e2e - ttft) / (output_tokens - 1)``, for requests with more than one output token.
- e2e latency: from sending the request to the end of its response.
- duration: from the start of the run to the last response's end; throughput is completed
  requests (and their tokens) over it.
- steady output throughput: the output tokens that arrived between the moments a tenth and nine
  tenths of them had arrived, over the time between: the rate once the first prompts are in and
  before the last responses drain at low concurrency, whose length moves the whole-run rate (with
  two waves of requests, by tens of percent between runs of one workload).
- SLO attainment: the share of *all* issued requests that completed with TTFT within the
  threshold (a failed request misses it).

Percentiles interpolate linearly between order statistics (numpy's default method).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RequestResult", "percentile", "summarize"]


@dataclass(slots=True)
class RequestResult:
    """One request of a run. Times are seconds; ``scheduled_s`` and ``sent_s`` count from the
    start of the run, the others from ``sent_s``."""

    index: int
    adapter_id: str | None
    input_len: int
    output_len: int
    scheduled_s: float
    sent_s: float = math.nan
    #: Time spent waiting for a free slot under ``--max-concurrency``.
    client_wait_s: float = 0.0
    ttft_s: float | None = None
    e2e_s: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    error_type: str | None = None
    error: str | None = None
    #: When each output token arrived, from the start of the run (not in the results file).
    token_times_s: list[float] = field(default_factory=list[float], repr=False)

    @property
    def ok(self) -> bool:
        """Completed without error."""
        return self.error_type is None and self.e2e_s is not None

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first (None with fewer than two tokens)."""
        if not self.ok or self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def end_s(self) -> float | None:
        """When the response ended, from the start of the run."""
        return None if self.e2e_s is None else self.sent_s + self.e2e_s


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation; NaN when empty."""
    if not 0 <= q <= 100:
        raise ValueError("q must be in [0, 100]")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return dict.fromkeys(("mean", "p50", "p90", "p99", "max"), None)
    return {
        "mean": math.fsum(values) / len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


# Fewer output tokens than this give no steady rate (the 10%-90% window would be a few events).
STEADY_MIN_TOKENS = 50


def steady_output_rate(results: list[RequestResult]) -> float | None:
    """Output tokens/s of completed requests between the arrival of the tenth and the ninetieth
    percentile of their tokens; None with fewer than ``STEADY_MIN_TOKENS`` or no time between."""
    times = sorted(t for r in results if r.ok for t in r.token_times_s)
    if len(times) < STEADY_MIN_TOKENS:
        return None
    first, last = len(times) // 10, len(times) - 1 - len(times) // 10
    elapsed = times[last] - times[first]
    return (last - first) / elapsed if elapsed > 0 else None


def summarize(results: list[RequestResult], slo_ttft_s: float) -> dict[str, Any]:
    """The summary of one run (its fields are documented in docs/bench.md)."""
    ok = [r for r in results if r.ok]
    ends = [end for r in ok if (end := r.end_s) is not None]
    duration = max(ends) if ends else 0.0
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_known = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpots = [t for r in ok if (t := r.tpot_s) is not None]
    attained = sum(1 for r in ok if r.ttft_s is not None and r.ttft_s <= slo_ttft_s)
    errors = Counter(r.error_type for r in results if not r.ok)
    examples: dict[str, str] = {}
    for r in results:
        if not r.ok and r.error_type is not None and r.error_type not in examples:
            examples[r.error_type] = (r.error or "")[:300]
    lags = [r.sent_s - r.scheduled_s - r.client_wait_s for r in results if not math.isnan(r.sent_s)]

    def per_s(amount: float) -> float:
        return amount / duration if duration > 0 else 0.0

    return {
        "requests": {
            "issued": len(results),
            "completed": len(ok),
            "failed": len(results) - len(ok),
        },
        # Adapters that requests of this point named (the base model not counted).
        "distinct_adapters": len({r.adapter_id for r in results if r.adapter_id}),
        "duration_s": duration,
        "throughput": {
            "requests_per_s": per_s(len(ok)),
            "output_tokens_per_s": per_s(output_tokens),
            "steady_output_tokens_per_s": steady_output_rate(results),
            "total_tokens_per_s": per_s(output_tokens + sum(prompt_known)),
        },
        "tokens": {
            "output": output_tokens,
            "prompt": sum(prompt_known) if prompt_known else None,
            # Requests whose output length differs from max_new_tokens (EOS not ignored?).
            "output_len_mismatch": sum(1 for r in ok if r.output_tokens != r.output_len),
            # Requests whose server-counted prompt length differs from the target.
            "prompt_len_mismatch": sum(
                1 for r in ok if r.prompt_tokens is not None and r.prompt_tokens != r.input_len
            ),
            # Server-counted prompt tokens minus the target, averaged (prompt calibration error).
            "prompt_len_error_mean": (
                math.fsum(r.prompt_tokens - r.input_len for r in ok if r.prompt_tokens is not None)
                / len(prompt_known)
                if prompt_known
                else None
            ),
        },
        "ttft_s": _stats(ttfts),
        "tpot_s": _stats(tpots),
        "e2e_latency_s": _stats([r.e2e_s for r in ok if r.e2e_s is not None]),
        "slo": {
            "ttft_threshold_s": slo_ttft_s,
            "attained": attained,
            "attainment": attained / len(results) if results else 0.0,
        },
        "errors": {str(k): v for k, v in sorted(errors.items(), key=lambda kv: str(kv[0]))},
        "error_examples": examples,
        "client": {
            "wait_s": _stats([r.client_wait_s for r in results]),
            # How late requests left against their schedule (a busy client event loop): should
            # stay far below the latencies measured.
            "send_lag_s": _stats(lags),
        },
    }
