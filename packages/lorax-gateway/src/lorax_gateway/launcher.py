"""``lorax-launcher``: gateway and engine in one process (the embedded, one-command setup).

Takes LoRAX launcher flags; engine flags go to the ``local`` backend (``lorax_engine``), the rest
configure the gateway. Example::

    lorax-launcher --model-id demo --port 8080
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from lorax_gateway.cli import add_gateway_flags, run_server, settings_from_args

#: Adapters are the point of LoRAX, so the launcher enables a few slots by default (upstream
#: LoRAX defaults to 1024, but here every slot preallocates its LoRA tables up front).
DEFAULT_ACTIVE_ADAPTERS = 8

#: Launcher flag (dest) -> engine option name. Flags left unset are not passed, so the engine's
#: own defaults apply.
_ENGINE_FLAGS = {
    "model_id": "model_id",
    "revision": "revision",
    "dtype": "dtype",
    "device": "device",
    "max_input_length": "max_input_length",
    "max_total_tokens": "max_total_tokens",
    "max_best_of": "max_best_of",
    "max_stop_sequences": "max_stop_sequences",
    "max_batch_prefill_tokens": "max_batch_prefill_tokens",
    "max_batch_total_tokens": "max_batch_total_tokens",
    "max_batch_size": "max_batch_size",
    "block_size": "block_size",
    "max_active_adapters": "lora_slots",
    "max_lora_rank": "lora_max_rank",
    "lora_dtype": "lora_dtype",
    "adapter_source": "adapter_source",
    "local_adapter_root": "local_adapter_roots",
    "preloaded_adapter_ids": "preloaded_adapter_ids",
    "adapter_cycle_time_s": "adapter_cycle_time_s",
    "adapter_load_timeout_s": "adapter_load_timeout_s",
    "adapter_memory_fraction": "adapter_memory_fraction",
    "max_adapter_bytes": "adapter_max_bytes",
    "quantize": "quantize",
    "kv_cache_dtype": "kv_cache_dtype",
    "eager": "eager",
    "num_shard": "num_shard",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``lorax-launcher`` argument parser."""
    parser = argparse.ArgumentParser(prog="lorax-launcher", description=__doc__)
    parser.add_argument("--model-id", required=True, help="model to serve ('demo': a tiny model)")
    parser.add_argument("--revision")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    for flag in (
        "--max-input-length",
        "--max-total-tokens",
        "--max-best-of",
        "--max-stop-sequences",
        "--max-batch-prefill-tokens",
        "--max-batch-total-tokens",
        "--max-batch-size",
        "--block-size",
        "--max-lora-rank",
        "--max-adapter-bytes",
        "--num-shard",
    ):
        parser.add_argument(flag, type=int)
    for flag in ("--adapter-cycle-time-s", "--adapter-load-timeout-s", "--adapter-memory-fraction"):
        parser.add_argument(flag, type=float)
    parser.add_argument(
        "--max-active-adapters",
        type=int,
        default=DEFAULT_ACTIVE_ADAPTERS,
        help="adapter slots on the device (each preallocates LoRA memory; 0 disables adapters)",
    )
    parser.add_argument(
        "--lora-dtype",
        choices=["auto", "fp8"],
        help="adapter slot tables in the model's dtype (auto) or float8 e4m3 (fp8: weights "
        "rounded with per-layer scales, half the adapter bytes per step, twice the slots)",
    )
    parser.add_argument("--adapter-source", choices=["hub", "local", "s3"])
    parser.add_argument(
        "--local-adapter-root",
        action="append",
        help="a directory `local` adapters load from (repeatable; tried in order)",
    )
    parser.add_argument(
        "--preloaded-adapter-ids",
        action="append",
        type=_ids,
        metavar="IDS",
        help="adapters (comma-separated, repeatable) loaded at start-up",
    )
    parser.add_argument(
        "--quantize",
        choices=["fp8", "gptq", "awq"],
        help="quantized base weights (gptq/awq checkpoints are also detected)",
    )
    parser.add_argument(
        "--kv-cache-dtype",
        choices=["auto", "fp8"],
        help="KV cache in the model's dtype (auto) or float8 e4m3 (fp8: twice the KV blocks)",
    )
    parser.add_argument("--eager", action="store_true", default=None, help="no CUDA graphs")
    add_gateway_flags(parser)
    return parser


def _ids(value: str) -> list[str]:
    return [i.strip() for i in value.split(",") if i.strip()]


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """Engine options from the launcher flags that were given."""
    options: dict[str, Any] = {}
    for dest, option in _ENGINE_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            options[option] = value
    if "preloaded_adapter_ids" in options:  # one list per flag occurrence
        options["preloaded_adapter_ids"] = [
            i for ids in options["preloaded_adapter_ids"] for i in ids
        ]
    # One admission limit for both: the gateway answers 429 before the engine has to.
    options["max_concurrent_requests"] = args.max_concurrent_requests
    return options


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``lorax-launcher`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args, "local", engine_options(args))
        from lorax_gateway.app import create_app
        from lorax_gateway.logs import configure_logging

        configure_logging(settings.logging)
        app = create_app(settings)
    except (ValueError, ImportError) as exc:
        print(f"lorax-launcher: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    run_server(settings, args.host, args.port, app=app, shutdown_timeout_s=args.shutdown_timeout)


if __name__ == "__main__":
    main()
