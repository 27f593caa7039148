"""``create_app(settings) -> Litestar``: the gateway application."""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import AsyncGenerator
from typing import Any

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import MutableScopeHeaders
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.types import Message, Scope

from lorax_gateway import __version__
from lorax_gateway.auth import AuthMiddleware
from lorax_gateway.backends.base import EngineBackend
from lorax_gateway.backends.registry import load_backend
from lorax_gateway.errors import exception_handler
from lorax_gateway.metrics import GatewayMetrics
from lorax_gateway.openapi import StrictPydanticSchemaPlugin
from lorax_gateway.routes import lorax_rest, meta, openai_compat
from lorax_gateway.routes.common import request_id_of
from lorax_gateway.service import GenerationService
from lorax_gateway.settings import GatewaySettings
from lorax_gateway.tenants import TenantRegistry
from lorax_gateway.tracing import GatewayTracing

logger = logging.getLogger("lorax_gateway")


async def _add_request_id(message: Message, scope: Scope) -> None:
    # before_send runs for every response, including Litestar's own 404/405/413 answers.
    if message["type"] == "http.response.start":
        MutableScopeHeaders.from_message(message)["x-request-id"] = request_id_of(scope)


def create_app(settings: GatewaySettings, backend: EngineBackend | None = None) -> Litestar:
    """Build the gateway app. ``backend`` overrides ``settings.backend`` (tests, embedding)."""
    engine = (
        backend if backend is not None else load_backend(settings.backend, settings.backend_options)
    )
    metrics = GatewayMetrics(settings.metrics)
    tracing = GatewayTracing(settings.tracing)
    tenants: TenantRegistry | None = None
    if settings.auth.tenants_file is not None:
        tenants = TenantRegistry.load(settings.auth.tenants_file)
    else:
        logger.warning("no --tenants-file: authentication is OFF, every caller is anonymous")
    service = GenerationService(engine, settings.admission, metrics, tracing, tenants)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None]:
        await engine.start()
        try:
            service.base_model_id = str((await engine.info()).get("model_id") or "")
        except Exception:
            logger.warning("engine info not available at start-up")
        reload_installed = False
        if tenants is not None:
            reload_installed = _install_sighup(tenants)
        try:
            yield
        finally:
            if reload_installed:
                _remove_sighup()
            await engine.close()
            tracing.shutdown()

    middleware: list[Any] = []
    if tenants is not None:
        middleware.append(DefineMiddleware(AuthMiddleware, registry=tenants))
    cors = (
        CORSConfig(allow_origins=settings.cors_allow_origins, expose_headers=["x-request-id"])
        if settings.cors_allow_origins
        else None
    )
    return Litestar(
        route_handlers=[*lorax_rest.ROUTES, *openai_compat.ROUTES, *meta.ROUTES],
        lifespan=[lifespan],
        middleware=middleware,
        before_send=[_add_request_id],
        exception_handlers={Exception: exception_handler},
        request_max_body_size=settings.admission.max_body_bytes,
        cors_config=cors,
        plugins=[StrictPydanticSchemaPlugin()],
        openapi_config=OpenAPIConfig(
            title="LoRAX gateway",
            version=__version__,
            path="/docs",
            render_plugins=[ScalarRenderPlugin(path="/")],
        ),
        state=_state(settings, service, metrics, tenants),
        # Logging belongs to the process (the CLI configures it), not to each app instance.
        logging_config=None,
    )


def _state(
    settings: GatewaySettings,
    service: GenerationService,
    metrics: GatewayMetrics,
    tenants: TenantRegistry | None,
) -> Any:
    from litestar.datastructures import State

    return State(
        {
            "settings": settings,
            "service": service,
            "metrics": metrics,
            "tenants": tenants,
            "started_at": time.time(),
        }
    )


def _install_sighup(tenants: TenantRegistry) -> bool:
    import asyncio

    def reload() -> None:
        try:
            tenants.reload()
        except Exception:
            logger.exception("tenants file reload failed; keeping the previous tenants")

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    except (RuntimeError, ValueError, NotImplementedError):
        # Not the main thread (e.g. an embedded server): reload only through the API object.
        return False
    return True


def _remove_sighup() -> None:
    import asyncio

    with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
