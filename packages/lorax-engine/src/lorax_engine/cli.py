"""Command line: ``lorax-engine serve --model-id ... --port ...`` (flag names from LoRAX's launcher)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from lorax_engine.config import DTYPES, KV_CACHE_DTYPES, LORA_DTYPES, EngineConfig
from lorax_engine.params import Limits
from lorax_engine.quant.spec import QUANTIZE_METHODS
from lorax_engine.structured.config import StructuredOutputConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorax-engine", description="LoRAX engine (paged KV, continuous batching)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the engine wire protocol over HTTP")
    serve.add_argument(
        "--model-id", default="demo", help="local dir, hub id (org/name[@revision]) or 'demo'"
    )
    serve.add_argument("--revision", default=None)
    serve.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="default: float32 on CPU, bfloat16 on CUDA",
    )
    serve.add_argument(
        "--quantize",
        choices=QUANTIZE_METHODS,
        default=None,
        help="fp8, bitsandbytes (8-bit), bitsandbytes-nf4/-fp4 (4-bit): quantize the weights "
        "at load; gptq/awq: a 4-bit checkpoint (detected from its config.json without the flag)",
    )
    serve.add_argument(
        "--kv-cache-dtype",
        choices=KV_CACHE_DTYPES,
        default="auto",
        help="auto: the model's dtype; fp8: float8 e4m3 (scale 1.0), twice the KV blocks",
    )
    serve.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--max-input-length", type=int, default=1024)
    serve.add_argument("--max-total-tokens", type=int, default=2048)
    serve.add_argument("--max-concurrent-requests", type=int, default=128)
    serve.add_argument("--max-best-of", type=int, default=2)
    serve.add_argument("--max-stop-sequences", type=int, default=4)
    serve.add_argument("--max-batch-prefill-tokens", type=int, default=4096)
    serve.add_argument(
        "--max-batch-total-tokens",
        type=int,
        default=None,
        help="KV pool size in tokens (default: from free memory)",
    )
    serve.add_argument("--max-batch-size", type=int, default=256)
    serve.add_argument("--block-size", type=int, default=16)
    serve.add_argument("--gpu-memory-fraction", type=float, default=0.9)
    serve.add_argument("--eager", action="store_true", help="disable CUDA graphs")
    serve.add_argument(
        "--num-shard",
        type=int,
        default=1,
        help="tensor parallelism: shard the model over this many GPUs of the host (GPUs 0..N-1)",
    )
    serve.add_argument(
        "--allow-bin-weights", action="store_true", help="allow pickled .bin weights (unsafe)"
    )
    serve.add_argument("--cache-dir", type=Path, default=None)
    serve.add_argument(
        "--max-active-adapters",
        type=int,
        default=8,  # as lorax-launcher: adapters work out of the box (each slot preallocates)
        help="GPU LoRA slots (0: no adapters)",
    )
    serve.add_argument("--max-lora-rank", type=int, default=64)
    serve.add_argument(
        "--lora-dtype",
        choices=LORA_DTYPES,
        default="auto",
        help="adapter slot tables. auto: the model's dtype; fp8: float8 e4m3, the adapter "
        "weights rounded to fp8 with per-layer scales for half the adapter bytes per step and "
        "twice the slots in the same memory",
    )
    serve.add_argument(
        "--adapter-source",
        choices=["hub", "local", "s3"],
        default="",
        help="default: hub (local for demo)",
    )
    serve.add_argument(
        "--local-adapter-root",
        type=Path,
        action="append",
        default=[],
        help="a directory `local` adapters load from (repeatable; tried in order)",
    )
    serve.add_argument(
        "--preloaded-adapter-ids",
        action="append",
        default=[],
        metavar="IDS",
        help="adapters (comma-separated, repeatable; from --adapter-source) loaded at start-up",
    )
    serve.add_argument(
        "--adapter-cycle-time-s",
        type=float,
        default=2.0,
        help="seconds an adapter admits requests while others wait for a slot",
    )
    serve.add_argument(
        "--adapter-load-timeout-s",
        type=float,
        default=120.0,
        help="seconds one adapter's download and validation may take before its requests fail",
    )
    serve.add_argument(
        "--adapter-memory-fraction",
        type=float,
        default=0.1,
        help="share of device memory the adapter slots may take (can lower --max-active-adapters)",
    )
    serve.add_argument(
        "--max-adapter-bytes",
        type=int,
        default=2 << 30,
        help="largest adapter weights file accepted, in bytes",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM: refuse new requests, let running ones finish for up to S seconds",
    )
    serve.add_argument(
        "--otlp-endpoint",
        default=None,
        metavar="URL",
        help="export OpenTelemetry spans over OTLP/HTTP to URL (/v1/traces appended); off if unset",
    )
    serve.add_argument(
        "--otlp-service-name",
        default="lorax-engine",
        help="service.name of the exported spans",
    )
    serve.add_argument(
        "--disable-structured-output",
        action="store_true",
        help="serve without response_format (for a tokenizer the grammar engine cannot read)",
    )
    serve.add_argument(
        "--json-whitespace",
        choices=["compact", "spaced"],
        default="compact",
        help='constrained JSON layout: compact {"a":1} or spaced {"a": 1}',
    )
    return parser


def split_ids(values: Sequence[str]) -> tuple[str, ...]:
    """``["a,b", "c"]`` -> ``("a", "b", "c")``: LoRAX takes the ids comma-separated."""
    return tuple(i.strip() for v in values for i in v.split(",") if i.strip())


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    limits = Limits(
        max_input_length=args.max_input_length,
        max_total_tokens=args.max_total_tokens,
        max_concurrent_requests=args.max_concurrent_requests,
        max_best_of=args.max_best_of,
        max_stop_sequences=args.max_stop_sequences,
    )
    return EngineConfig(
        model_id=args.model_id,
        revision=args.revision,
        dtype=args.dtype,
        device=args.device,
        limits=limits,
        max_batch_prefill_tokens=args.max_batch_prefill_tokens,
        max_batch_total_tokens=args.max_batch_total_tokens,
        max_batch_size=args.max_batch_size,
        block_size=args.block_size,
        kv_cache_dtype=args.kv_cache_dtype,
        gpu_memory_fraction=args.gpu_memory_fraction,
        eager=args.eager,
        num_shard=args.num_shard,
        allow_bin_weights=args.allow_bin_weights,
        quantize=args.quantize,
        cache_dir=args.cache_dir,
        lora_slots=args.max_active_adapters,
        lora_max_rank=args.max_lora_rank,
        lora_dtype=args.lora_dtype,
        adapter_source=args.adapter_source,
        local_adapter_roots=args.local_adapter_root,
        preloaded_adapter_ids=split_ids(args.preloaded_adapter_ids),
        adapter_cycle_time_s=args.adapter_cycle_time_s,
        adapter_load_timeout_s=args.adapter_load_timeout_s,
        adapter_memory_fraction=args.adapter_memory_fraction,
        adapter_max_bytes=args.max_adapter_bytes,
        structured_output=None
        if args.disable_structured_output
        else StructuredOutputConfig(whitespace=args.json_whitespace),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.shutdown_timeout < 0:
        parser.error("--shutdown-timeout must be >= 0")
    from lorax_engine.tracing import TracingConfig

    try:
        tracing = TracingConfig(args.otlp_endpoint, args.otlp_service_name)
    except ValueError as exc:
        parser.error(str(exc))
    from lorax_engine.async_engine import AsyncEngine
    from lorax_engine.core.factory import EngineStartupError
    from lorax_engine.serve import run_server

    try:
        engine = AsyncEngine.from_config(config)
    except EngineStartupError as exc:
        # A configuration problem, not a crash: one clear line instead of a traceback.
        logging.getLogger("lorax_engine").error("%s", exc)
        sys.exit(f"lorax-engine: cannot start: {exc}")
    run_server(
        engine, args.host, args.port, shutdown_timeout_s=args.shutdown_timeout, tracing=tracing
    )


if __name__ == "__main__":
    main()
