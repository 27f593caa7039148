"""``lorax-gateway serve``: the gateway in front of engines that run elsewhere.

Example::

    lorax-gateway serve --engine-url http://10.0.0.5:8081 --engine-url http://10.0.0.6:8081 --port 8080
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lorax_gateway.settings import (
    AdmissionConfig,
    AuthConfig,
    GatewaySettings,
    LoggingConfig,
    TracingConfig,
)


def add_gateway_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``lorax-gateway serve`` and ``lorax-launcher``."""
    parser.add_argument("--hostname", "--host", dest="host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-concurrent-requests", type=int, default=128)
    parser.add_argument("--max-client-body-bytes", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--tenants-file", type=Path, default=None)
    parser.add_argument("--otlp-endpoint", default=None, help="OTLP/HTTP collector URL")
    parser.add_argument("--otlp-service-name", default="lorax-gateway")
    parser.add_argument("--json-output", action="store_true", help="log one JSON object a line")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--cors-allow-origin", action="append", default=[])
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds a SIGTERM waits for in-flight requests (new ones get 503) before exiting",
    )
    parser.add_argument(
        "--public-adapter", action="append", default=[], help="adapter listed by /v1/models"
    )


def settings_from_args(
    args: argparse.Namespace, backend: str, options: dict[str, Any]
) -> GatewaySettings:
    """Gateway settings from parsed flags."""
    return GatewaySettings(
        backend=backend,
        backend_options=options,
        admission=AdmissionConfig(
            max_concurrent_requests=args.max_concurrent_requests,
            max_body_bytes=args.max_client_body_bytes,
        ),
        auth=AuthConfig(tenants_file=args.tenants_file),
        tracing=TracingConfig(
            otlp_endpoint=args.otlp_endpoint, service_name=args.otlp_service_name
        ),
        logging=LoggingConfig(json_output=args.json_output, level=args.log_level),
        cors_allow_origins=list(args.cors_allow_origin),
        public_adapters=list(args.public_adapter),
    )


def run_server(
    settings: GatewaySettings,
    host: str,
    port: int,
    app: Any = None,
    shutdown_timeout_s: float = 30.0,
) -> None:
    """Configure logging and serve the app with uvicorn (uvloop + httptools when available).

    SIGTERM drains (:mod:`lorax_gateway.draining`): new requests get 503 while the ones in flight
    get up to ``shutdown_timeout_s`` seconds to finish.
    """
    import uvicorn

    from lorax_gateway.app import create_app
    from lorax_gateway.draining import DrainingServer, DrainMiddleware, DrainState
    from lorax_gateway.logs import configure_logging

    configure_logging(settings.logging)
    drain = DrainState()
    config = uvicorn.Config(
        DrainMiddleware(app if app is not None else create_app(settings), drain),
        host=host,
        port=port,
        log_config=None,
        access_log=False,  # the gateway logs each request itself, with its request id
    )
    DrainingServer(config, drain, shutdown_timeout_s).run()


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--backend-option needs key=value, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw  # a bare string
    return key.replace("-", "_"), value


def build_parser() -> argparse.ArgumentParser:
    """The ``lorax-gateway`` argument parser."""
    parser = argparse.ArgumentParser(prog="lorax-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the public API")
    add_gateway_flags(serve)
    serve.add_argument(
        "--engine-url", action="append", default=[], help="lorax-engine serve URL (repeatable)"
    )
    serve.add_argument(
        "--backend",
        default=None,
        help="backend entry point (default: http with --engine-url)",
    )
    serve.add_argument(
        "--backend-option",
        action="append",
        default=[],
        type=_parse_option,
        help="key=value (JSON value) passed to the backend",
    )
    serve.add_argument(
        "--upstream-api-key-env",
        default="LORAX_UPSTREAM_API_KEY",
        help="environment variable holding the openai backend's upstream key",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``lorax-gateway`` console script."""
    args = build_parser().parse_args(argv)
    backend = args.backend or "http"
    options: dict[str, Any] = dict(args.backend_option)
    if args.engine_url:
        key = "base_url" if backend == "openai" else "engine_urls"
        options[key] = args.engine_url if key == "engine_urls" else args.engine_url[0]
    if backend == "openai" and os.environ.get(args.upstream_api_key_env):
        options["api_key"] = os.environ[args.upstream_api_key_env]
    if backend == "http" and not options.get("engine_urls"):
        print("lorax-gateway serve: give at least one --engine-url", file=sys.stderr)
        raise SystemExit(2)
    try:
        settings = settings_from_args(args, backend, options)
    except ValueError as exc:
        print(f"lorax-gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    run_server(settings, args.host, args.port, shutdown_timeout_s=args.shutdown_timeout)


if __name__ == "__main__":
    main()
