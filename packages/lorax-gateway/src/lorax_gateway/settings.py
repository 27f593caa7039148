"""Configuration of the gateway: one dataclass per feature, grouped in :class:`GatewaySettings`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter


@dataclass(slots=True)
class AdmissionConfig:
    """Limits applied before a request reaches the engine."""

    #: Requests in flight across all tenants; one more is answered 429 ``overloaded``.
    max_concurrent_requests: int = 128
    #: Largest accepted request body; a larger one is answered 413.
    max_body_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_concurrent_requests <= 0:
            raise ValueError("max_concurrent_requests must be > 0")
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be > 0")


@dataclass(slots=True)
class AuthConfig:
    """Tenants and API keys; auth is off when ``tenants_file`` is None."""

    tenants_file: Path | None = None

    def __post_init__(self) -> None:
        if self.tenants_file is not None and not Path(self.tenants_file).is_file():
            raise ValueError(f"tenants file {self.tenants_file} does not exist")


@dataclass(slots=True)
class MetricsConfig:
    """Prometheus metrics of the app's own registry."""

    #: Distinct adapter ids that get their own label value; later ones are counted as "other".
    max_adapter_labels: int = 64
    #: Scrape the engines' own metrics into ``/metrics`` (labelled by engine).
    scrape_engine: bool = True

    def __post_init__(self) -> None:
        if self.max_adapter_labels < 0:
            raise ValueError("max_adapter_labels must be >= 0")


@dataclass(slots=True)
class TracingConfig:
    """OpenTelemetry spans; off unless an OTLP endpoint (or, in tests, an exporter) is given."""

    otlp_endpoint: str | None = None
    service_name: str = "lorax-gateway"
    #: An exporter object instead of OTLP (tests use the SDK's in-memory exporter).
    exporter: SpanExporter | None = None

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded."""
        return self.otlp_endpoint is not None or self.exporter is not None

    def __post_init__(self) -> None:
        if self.otlp_endpoint is not None and not self.otlp_endpoint.startswith(
            ("http://", "https://")
        ):
            raise ValueError("otlp_endpoint must be an http(s) URL (OTLP/HTTP)")


@dataclass(slots=True)
class LoggingConfig:
    """Log format and level."""

    json_output: bool = False
    level: str = "INFO"
    access_log: bool = True

    def __post_init__(self) -> None:
        if self.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {self.level!r}")


@dataclass(slots=True)
class GatewaySettings:
    """Everything :func:`lorax_gateway.create_app` needs."""

    #: Entry-point name of the engine backend (``local``, ``http``, ``openai``, ``synthetic``).
    backend: str = "http"
    #: Keyword options of the backend's ``from_options``.
    backend_options: dict[str, Any] = field(default_factory=dict[str, Any])
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cors_allow_origins: list[str] = field(default_factory=list[str])
    #: Adapters listed by ``/v1/models`` for everyone (besides the engine's and tenants' own).
    public_adapters: list[str] = field(default_factory=list[str])

    def __post_init__(self) -> None:
        if not self.backend:
            raise ValueError("backend must be named")
