"""``lorax-bench``: an open-loop, multi-adapter load generator for LoRAX- and OpenAI-compatible
servers. See docs/bench.md for the workload model and the results' fields."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lorax.bench.metrics import RequestResult
from lorax.bench.protocol import PROTOCOLS
from lorax.bench.session import configs_from_args, run_benchmark
from lorax.bench.sweep import ProgressFactory, RateSpec
from lorax.bench.workload import LengthDist

__all__ = ["main", "parser"]


def _csv(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


def _adapter_count(text: str) -> int:
    return 0 if text.strip() == "base" else int(text)


def parser() -> argparse.ArgumentParser:
    """The command line (documented in docs/bench.md)."""
    p = argparse.ArgumentParser(
        prog="lorax-bench",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    server = p.add_argument_group("server")
    server.add_argument("--url", default="http://127.0.0.1:8080", help="server root URL")
    server.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="lorax",
        help="lorax: /generate_stream; openai: /v1/completions; openai-chat: "
        "/v1/chat/completions (all streaming)",
    )
    server.add_argument("--model", default="", help="openai: the `model` of base-model requests")
    server.add_argument("--api-key", default=None, help="sent as Authorization: Bearer")
    server.add_argument("--adapter-source", default=None, help="hub, local or s3")

    load = p.add_argument_group("load")
    load.add_argument(
        "--rate",
        type=_csv(RateSpec.parse),
        default="1",
        help="requests/s, comma-separated sweep: numbers, inf, trace, or a "
        "fraction of saturation such as 0.5x (after an inf)",
    )
    load.add_argument(
        "--arrival",
        choices=("poisson", "gamma"),
        default="poisson",
        help="inter-arrival gaps: exponential, or gamma with --cv",
    )
    load.add_argument(
        "--cv", type=float, default=1.0, help="gamma arrivals' coefficient of variation"
    )
    load.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="most requests in flight (later ones wait for a slot)",
    )
    load.add_argument("--num-requests", type=int, default=1000, help="requests per point")
    load.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop sending after this many seconds per point",
    )
    load.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request")
    load.add_argument(
        "--seed", type=int, default=0, help="seed of the trace (same seed, same trace)"
    )
    load.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="requests sent (all at once, under --max-concurrency) before the sweep and not "
        "measured: the trace's first ones, over the largest adapter count",
    )

    adapters = p.add_argument_group("adapters")
    adapters.add_argument(
        "--num-adapters",
        type=_csv(_adapter_count),
        default="1",
        help="adapter counts to sweep, comma-separated; 'base' (or 0) = no adapter",
    )
    adapters.add_argument(
        "--adapter-ids",
        type=_csv(str),
        default=(),
        help="explicit adapter ids, comma-separated, instead of the template (N takes the first N)",
    )
    adapters.add_argument("--adapter-template", default="adapter-{i}", help="adapter id of index i")
    adapters.add_argument(
        "--adapter-dist",
        choices=("uniform", "zipf"),
        default="uniform",
        help="adapter popularity: uniform, or power law (adapter i weighs 1/(i+1)^alpha)",
    )
    adapters.add_argument("--zipf-alpha", type=float, default=1.0, help="power-law exponent")

    lengths = p.add_argument_group("lengths")
    lengths.add_argument(
        "--input-len",
        type=LengthDist.parse,
        default="uniform:8:512",
        help="prompt tokens: uniform:LO:HI or fixed:N",
    )
    lengths.add_argument(
        "--output-len",
        type=LengthDist.parse,
        default="uniform:8:512",
        help="new tokens (exact: EOS is ignored)",
    )
    lengths.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="JSONL trace replacing the drawn lengths (see docs/bench.md)",
    )
    lengths.add_argument("--save-trace", type=Path, default=None, help="write the trace as JSONL")
    lengths.add_argument(
        "--words-per-token",
        type=float,
        default=None,
        help="skip the /tokenize calibration and assume this ratio",
    )
    lengths.add_argument(
        "--prompt-fit",
        choices=("exact", "mean"),
        default="exact",
        help="exact: cut each prompt to its token count through /tokenize's spans (one call "
        "per request before the run; mean when the server gives no spans); mean: size prompts "
        "by the measured tokens per word",
    )

    out = p.add_argument_group("output")
    out.add_argument("--slo-ttft", type=float, default=6.0, help="TTFT threshold (s) of the SLO")
    out.add_argument(
        "--output", type=Path, default=Path("lorax-bench-results.json"), help="results JSON"
    )
    out.add_argument("--plot", type=Path, default=None, help="PNG plot of the sweep")
    out.add_argument(
        "--plot-x",
        choices=("auto", "adapters", "rate"),
        default="auto",
        help="x axis of the plot (auto: adapters when the sweep has more counts than rates)",
    )
    out.add_argument(
        "--save-requests",
        action="store_true",
        help="put every request's record in the results file",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _progress_factory(enabled: bool) -> ProgressFactory | None:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        print("lorax-bench: no progress bar without tqdm (pip install 'lorax-client[bench]')",
              file=sys.stderr)  # fmt: skip
        return None

    bars: list[Any] = []

    def factory(description: str, total: int) -> Callable[[RequestResult], None]:
        for bar in bars:
            bar.close()
        bars.clear()
        bar = tqdm(
            total=total,
            desc=description,
            unit="req",
            file=sys.stderr,
            mininterval=0.2 if sys.stderr.isatty() else 5.0,
            dynamic_ncols=True,
        )
        bars.append(bar)
        errors = [0]

        def done(result: RequestResult) -> None:
            if not result.ok:
                errors[0] += 1
                bar.set_postfix_str(f"errors={errors[0]}", refresh=False)
            bar.update(1)
            if bar.n >= total:
                bar.close()

        return done

    return factory


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lorax-bench`` console script. Exit status 1 when no request of any
    point completed (a server that is down, or a wrong URL), 130 when interrupted (Ctrl-C)."""
    p = parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(arguments)
    try:
        configs_from_args(args)
    except (ValueError, OSError) as exc:  # bad values, or a trace file that cannot be read
        p.error(str(exc))
    if any(math.isinf(r.value) for r in args.rate) and args.max_concurrency is None:
        print(
            "lorax-bench: rate inf without --max-concurrency sends every request at once",
            file=sys.stderr,
        )
    progress = _progress_factory(not args.no_progress)
    try:
        document = asyncio.run(run_benchmark(args, arguments, progress))
    except KeyboardInterrupt:
        print(f"lorax-bench: interrupted; the points measured so far are in {args.output}",
              file=sys.stderr)  # fmt: skip
        return 130
    completed = sum(p["summary"]["requests"]["completed"] for p in document["points"])
    return 0 if completed else 1


if __name__ == "__main__":
    sys.exit(main())
