"""Bearer-key authentication middleware: identifies the tenant of each request.

With a tenants file, every route except the operational ones (health, info, metrics, docs)
needs ``Authorization: Bearer <key>``; the tenant is put in ``scope["state"]["tenant"]``.
"""

from __future__ import annotations

from typing import Any, cast

import msgspec
from litestar.types import ASGIApp, Receive, Scope, Send

from lorax_gateway.tenants import TenantRegistry

#: Paths that answer without a key: probes, scrapes and API docs reveal no tenant data.
OPEN_PATHS = frozenset({"/health", "/info", "/metrics", "/openapi.json"})
OPEN_PREFIXES = ("/docs", "/schema")


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class AuthMiddleware:
    """ASGI middleware; built by :func:`auth_middleware` around the app's handlers."""

    def __init__(self, app: ASGIApp, registry: TenantRegistry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = cast(str, scope["path"])
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        key = _bearer(scope)
        tenant = self.registry.authenticate(key) if key else None
        if tenant is None:
            message = "invalid API key" if key else "missing bearer API key"
            body = msgspec.json.encode({"error": message, "error_type": "authentication"})
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b"Bearer"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        state = cast(dict[str, Any], scope.setdefault("state", {}))  # pyright: ignore[reportCallIssue,reportArgumentType,reportUnknownVariableType]
        state["tenant"] = tenant
        await self.app(scope, receive, send)
