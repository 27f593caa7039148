"""The results file (JSON) and the table printed at the end of a run."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from lorax.bench.metrics import RequestResult

__all__ = ["format_table", "results_document", "write_results"]

SCHEMA_VERSION = 1


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in cast("dict[object, object]", value).items()}
    if isinstance(value, list):
        return [_finite(v) for v in cast("list[object]", value)]
    return value


def results_document(
    meta: dict[str, Any], points: list[dict[str, Any]], *, per_request: bool
) -> dict[str, Any]:
    """The results file's content: ``meta`` (tool, server, workload, prompts, ...) and one entry
    per point, with every request's record when ``per_request``."""
    out_points: list[dict[str, Any]] = []
    for point in points:
        entry = {k: v for k, v in point.items() if k != "results"}
        if per_request:
            results: list[RequestResult] = point["results"]
            entry["requests"] = [
                {k: v for k, v in asdict(r).items() if k != "token_times_s"} for r in results
            ]
        out_points.append(entry)
    return _finite({"schema_version": SCHEMA_VERSION, **meta, "points": out_points})


def write_results(path: Path, document: dict[str, Any]) -> None:
    """Write the document as indented JSON (strict: no NaN). Atomically: the file is rewritten
    after every point, and whoever reads it meanwhile sees a whole document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def format_table(points: list[dict[str, Any]]) -> str:
    """One line per point: throughput, TTFT/TPOT percentiles (ms), SLO attainment, errors."""
    header = (
        f"{'adapters':>8} {'rate':>9} {'done':>6} {'err':>5} {'req/s':>8} {'out tok/s':>10} "
        f"{'steady':>8} "
        f"{'TTFT p50':>9} {'p90':>7} {'p99':>7} {'TPOT p50':>9} {'p90':>6} {'p99':>6} "
        f"{'e2e p50':>8} {'p99':>8} {'SLO':>6}"
    )
    lines = [header, "-" * len(header)]
    for point in points:
        s = point["summary"]
        ttft, tpot, e2e = s["ttft_s"], s["tpot_s"], s["e2e_latency_s"]
        adapters = "base" if point["num_adapters"] == 0 else str(point["num_adapters"])
        lines.append(
            f"{adapters:>8} {point['rate']:>9} {s['requests']['completed']:>6} "
            f"{s['requests']['failed']:>5} {s['throughput']['requests_per_s']:>8.2f} "
            f"{s['throughput']['output_tokens_per_s']:>10.1f} "
            f"{_rate(s['throughput'].get('steady_output_tokens_per_s')):>8} "
            f"{_ms(ttft['p50']):>9} {_ms(ttft['p90']):>7} {_ms(ttft['p99']):>7} "
            f"{_ms(tpot['p50']):>9} {_ms(tpot['p90']):>6} {_ms(tpot['p99']):>6} "
            f"{_ms(e2e['p50']):>8} {_ms(e2e['p99']):>8} {s['slo']['attainment']:>6.1%}"
        )
    lines.append(
        "(latencies in ms; steady = output tok/s between 10% and 90% of the tokens' arrivals;"
        " SLO = share of issued requests with TTFT under the threshold)"
    )
    errors: dict[str, int] = {}
    for point in points:
        for kind, count in point["summary"]["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    if errors:
        lines.append("errors: " + ", ".join(f"{k}={v}" for k, v in sorted(errors.items())))
    return "\n".join(lines)
