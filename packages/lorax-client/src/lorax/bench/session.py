"""One benchmark run from parsed command-line arguments: draw the trace, ask the server who it is
and how it tokenizes, warm up, run the sweep, and write the results.

The results file is rewritten after every point (with ``"complete": false`` until the last), so
a long sweep that is interrupted or crashes keeps what it measured.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from lorax._version import __version__
from lorax.bench.metrics import summarize
from lorax.bench.prompts import PromptCalibration, calibrate, fitted_prompts, prompts_for
from lorax.bench.protocol import Endpoint
from lorax.bench.report import format_table, results_document, write_results
from lorax.bench.runner import Runner, RunOptions
from lorax.bench.server import describe, token_counter, token_spans
from lorax.bench.sweep import ProgressFactory, SweepConfig, plan, run_sweep
from lorax.bench.workload import (
    AdapterPopularity,
    TraceRequest,
    WorkloadConfig,
    build_trace,
    load_trace,
    save_trace,
)

__all__ = ["Configs", "configs_from_args", "pool_limits", "run_benchmark"]

# Idle connections are dropped well before servers close theirs (uvicorn: 5 s, which is also
# httpx's default expiry): a request sent on a connection that the server closes at that moment
# is reset (a ReadError), the likely cause of the one failed request in run 2 of #9, whose point
# started on connections left idle by the previous point's tail.
KEEPALIVE_EXPIRY_S = 1.0


def pool_limits(max_concurrency: int | None) -> httpx.Limits:
    """The client's connection pool: one connection per request in flight (latency is measured
    per request, so the pool must never be what makes a request wait), idle ones dropped after
    ``KEEPALIVE_EXPIRY_S``."""
    return httpx.Limits(
        max_connections=max_concurrency,
        max_keepalive_connections=None,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )


@dataclass(slots=True, frozen=True)
class Configs:
    """The validated configuration of a run."""

    sweep: SweepConfig
    options: RunOptions
    workload: WorkloadConfig
    trace: list[TraceRequest]


def configs_from_args(args: argparse.Namespace) -> Configs:
    """Build and validate every config, and draw or read the trace (a ValueError here is a
    usage error)."""
    sweep = SweepConfig(
        rates=args.rate,
        adapter_counts=args.num_adapters,
        adapter_template=args.adapter_template,
        adapter_ids=args.adapter_ids,
        popularity=AdapterPopularity(args.adapter_dist, args.zipf_alpha),
        slo_ttft_s=args.slo_ttft,
    )
    endpoint = Endpoint(args.protocol, args.model, args.adapter_source)
    options = RunOptions(endpoint, args.max_concurrency, args.duration, args.request_timeout)
    workload = WorkloadConfig(
        num_requests=args.num_requests,
        seed=args.seed,
        arrival=args.arrival,
        cv=args.cv,
        input_len=args.input_len,
        output_len=args.output_len,
    )
    if args.words_per_token is not None and args.words_per_token <= 0:
        raise ValueError("--words-per-token must be > 0")
    if not 0 <= args.warmup <= args.num_requests:
        raise ValueError("--warmup must be in [0, --num-requests]")
    if args.trace is not None:
        trace = load_trace(args.trace, args.seed)[: args.num_requests]
    else:
        trace = build_trace(workload)
    if any(r.value == 0 for r in sweep.rates) and any(r.arrival_s is None for r in trace):
        raise ValueError("--rate trace needs a --trace whose requests all have arrival_s")
    return Configs(sweep, options, workload, trace)


def _workload_record(
    args: argparse.Namespace, sweep: SweepConfig, trace: list[TraceRequest]
) -> dict[str, Any]:
    return {
        "num_requests": len(trace),
        "seed": args.seed,
        "trace_file": None if args.trace is None else str(args.trace),
        "arrival": args.arrival,
        "cv": args.cv if args.arrival == "gamma" else 1.0,
        "input_len": str(args.input_len),
        "output_len": str(args.output_len),
        "rates": [r.label for r in sweep.rates],
        "adapter_counts": list(sweep.adapter_counts),
        "adapter_template": None if sweep.adapter_ids else sweep.adapter_template,
        "adapter_ids": list(sweep.adapter_ids) or None,
        "adapter_dist": sweep.popularity.kind,
        "zipf_alpha": sweep.popularity.alpha if sweep.popularity.kind == "zipf" else None,
        "max_concurrency": args.max_concurrency,
        "duration_s": args.duration,
        "request_timeout_s": args.request_timeout,
        "slo_ttft_s": args.slo_ttft,
    }


async def _calibration(http: httpx.AsyncClient, args: argparse.Namespace) -> PromptCalibration:
    if args.words_per_token is not None:
        return PromptCalibration.assumed(args.words_per_token)
    counter = await token_counter(http, args.model)
    if counter is None:
        print("lorax-bench: the server has no /tokenize; assuming 0.75 words per token",
              file=sys.stderr)  # fmt: skip
        return PromptCalibration.assumed(0.75)
    return await calibrate(counter)


async def run_benchmark(
    args: argparse.Namespace, argv: Sequence[str] = (), progress: ProgressFactory | None = None
) -> dict[str, Any]:
    """Run the benchmark that ``args`` (parsed from ``argv``) describe, writing the results file
    as it goes; returns the final results document."""
    configs = configs_from_args(args)
    sweep, trace = configs.sweep, configs.trace
    if args.save_trace is not None:
        save_trace(trace, args.save_trace)
    meta: dict[str, Any] = {
        "tool": "lorax-bench",
        "version": __version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": ["lorax-bench", *argv],
        "complete": False,
        "server": {"url": args.url, "protocol": args.protocol, "model": args.model},
        "workload": _workload_record(args, sweep, trace),
    }

    def write(points: list[dict[str, Any]]) -> dict[str, Any]:
        document = results_document(meta, points, per_request=args.save_requests)
        write_results(args.output, document)
        return document

    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = pool_limits(args.max_concurrency)
    timeout = httpx.Timeout(args.request_timeout, connect=min(30.0, args.request_timeout))
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, limits=limits, timeout=timeout
    ) as http:
        meta["server"].update(await describe(http))
        calibration = await _calibration(http, args)
        spans = None
        if args.prompt_fit == "exact" and calibration.method == "tokenize":
            spans = await token_spans(http)
        if spans is not None:
            prompts = await fitted_prompts(trace, calibration, spans)
        else:
            prompts = prompts_for(trace, calibration)
        meta["prompts"] = {
            "method": calibration.method,
            "tokens_per_word": calibration.tokens_per_word,
            "special_tokens": calibration.special_tokens,
            "fit": "mean" if spans is None else "exact",
        }
        runner = Runner(http, configs.options)
        meta["workload"]["warmup"] = None
        if args.warmup:
            warm = plan(
                trace[: args.warmup],
                prompts[: args.warmup],
                math.inf,
                max(sweep.adapter_counts),
                sweep,
            )
            on_done = progress("warmup", len(warm)) if progress is not None else None
            summary = summarize(await runner.run(warm, on_done), sweep.slo_ttft_s)
            meta["workload"]["warmup"] = {
                "requests": summary["requests"],
                "errors": summary["errors"],
            }
        write([])
        points = await run_sweep(runner, trace, prompts, sweep, progress, on_point=write)
    meta["complete"] = True
    document = write(points)
    print(format_table(document["points"]))
    print(f"results: {args.output}")
    if args.plot is not None:
        from lorax.bench.plot import plot_points

        try:
            plot_points(
                document["points"], args.plot, title=f"lorax-bench: {args.url}", axis=args.plot_x
            )
        except ImportError:
            print("lorax-bench: no plot without matplotlib (pip install 'lorax-client[bench]')",
                  file=sys.stderr)  # fmt: skip
        else:
            print(f"plot: {args.plot}")
    return document
