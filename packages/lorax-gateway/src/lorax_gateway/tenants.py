"""Tenants: API keys (stored as SHA-256 hashes), private adapter namespaces and limits.

The tenants file is TOML (docs/tenants.md)::

    public_adapters = ["org/shared-adapter"]

    [tenants.acme]
    key_sha256 = ["<hex sha256 of the key>"]
    namespaces = ["acme"]            # adapter ids "acme/..." are private to acme
    adapters = ["acme/support-v1"]   # listed by /v1/models for acme
    max_concurrent_requests = 8
    requests_per_minute = 600
    tokens_per_minute = 200000

A private adapter of another tenant is reported exactly like an adapter that does not exist.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorax_gateway.limits import TenantLimiter, TenantLimits

logger = logging.getLogger("lorax_gateway.tenants")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TENANT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def hash_key(key: str) -> str:
    """SHA-256 hex digest of an API key (what the tenants file stores)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(slots=True, frozen=True)
class Tenant:
    """One tenant as configured."""

    id: str
    key_hashes: tuple[bytes, ...]
    namespaces: frozenset[str]
    adapters: tuple[str, ...]
    limits: TenantLimits


def adapter_namespace(adapter_id: str) -> str | None:
    """``"acme"`` for ``"acme/support-v1"``; None for an id without a namespace."""
    head, sep, _ = adapter_id.partition("/")
    return head if sep else None


@dataclass(slots=True)
class TenantRegistry:
    """The tenants of one tenants file, with their live limiters."""

    path: Path
    tenants: dict[str, Tenant] = field(default_factory=dict[str, Tenant])
    public_adapters: tuple[str, ...] = ()
    limiters: dict[str, TenantLimiter] = field(default_factory=dict[str, TenantLimiter])
    _owner_of_namespace: dict[str, str] = field(default_factory=dict[str, str])

    @classmethod
    def load(cls, path: Path) -> TenantRegistry:
        """Read and validate a tenants file."""
        registry = cls(path=Path(path))
        registry.reload()
        return registry

    def reload(self) -> None:
        """Re-read the file; keep limiter windows and usage of tenants that remain.

        A bad file raises and leaves the current tenants in place (a typo must not lock everyone
        out). In-flight requests keep the limiter object they were admitted with.
        """
        tenants, public = _parse(self.path.read_bytes())
        owners: dict[str, str] = {}
        for tenant in tenants.values():
            for ns in tenant.namespaces:
                if ns in owners:
                    raise ValueError(
                        f"namespace {ns!r} is owned by {owners[ns]!r} and {tenant.id!r}"
                    )
                owners[ns] = tenant.id
        limiters: dict[str, TenantLimiter] = {}
        for tid, tenant in tenants.items():
            old = self.limiters.get(tid)
            limiters[tid] = (
                old.with_limits(tenant.limits) if old else TenantLimiter(limits=tenant.limits)
            )
        self.tenants, self.public_adapters = tenants, public
        self._owner_of_namespace, self.limiters = owners, limiters
        logger.info("loaded %d tenants from %s", len(tenants), self.path)

    def authenticate(self, key: str) -> Tenant | None:
        """The tenant owning ``key``, comparing against every stored hash in constant time."""
        digest = hashlib.sha256(key.encode()).digest()
        found: Tenant | None = None
        # No early exit: the time taken does not depend on which (if any) tenant matches.
        for tenant in self.tenants.values():
            for stored in tenant.key_hashes:
                if hmac.compare_digest(stored, digest):
                    found = tenant
        return found

    def can_use(self, tenant: Tenant | None, adapter_id: str) -> bool:
        """Whether ``tenant`` may use ``adapter_id`` (public, or in one of its namespaces)."""
        ns = adapter_namespace(adapter_id)
        owner = self._owner_of_namespace.get(ns) if ns is not None else None
        return owner is None or (tenant is not None and owner == tenant.id)

    def visible(self, tenant: Tenant | None, adapter_ids: Iterable[str]) -> list[str]:
        """The adapters of ``adapter_ids`` that ``tenant`` may see, in order, without duplicates."""
        seen: dict[str, None] = {}
        for adapter_id in adapter_ids:
            if adapter_id not in seen and self.can_use(tenant, adapter_id):
                seen[adapter_id] = None
        return list(seen)


def _parse(raw: bytes) -> tuple[dict[str, Tenant], tuple[str, ...]]:
    doc = tomllib.loads(raw.decode())
    public = doc.get("public_adapters", [])
    if not isinstance(public, list) or not all(isinstance(a, str) for a in public):  # pyright: ignore[reportUnknownVariableType]
        raise ValueError("public_adapters must be a list of strings")
    raw_tenants: Any = doc.get("tenants", {})
    if not isinstance(raw_tenants, dict):
        raise ValueError("[tenants] must be a table")
    tenants: dict[str, Tenant] = {}
    for tid, spec in raw_tenants.items():  # pyright: ignore[reportUnknownVariableType]
        tenants[str(tid)] = _parse_tenant(str(tid), spec)  # pyright: ignore[reportUnknownArgumentType]
    return tenants, tuple(str(a) for a in public)  # pyright: ignore[reportUnknownVariableType,reportUnknownArgumentType]


def _str_list(spec: dict[str, Any], key: str, tid: str) -> list[str]:
    value = spec.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):  # pyright: ignore[reportUnknownVariableType]
        raise ValueError(f"tenant {tid!r}: {key} must be a list of strings")
    return [str(v) for v in value]  # pyright: ignore[reportUnknownVariableType,reportUnknownArgumentType]


def _parse_tenant(tid: str, spec: Any) -> Tenant:
    if not _TENANT_ID.match(tid):
        raise ValueError(f"tenant id {tid!r} must match {_TENANT_ID.pattern}")
    if not isinstance(spec, dict):
        raise ValueError(f"tenant {tid!r} must be a table")
    table: dict[str, Any] = dict(spec)  # pyright: ignore[reportUnknownArgumentType]
    known = {
        "key_sha256",
        "namespaces",
        "adapters",
        "max_concurrent_requests",
        "requests_per_minute",
        "tokens_per_minute",
    }
    unknown = set(table) - known
    if unknown:
        raise ValueError(f"tenant {tid!r}: unknown keys {sorted(unknown)}")
    hashes = [h.lower() for h in _str_list(table, "key_sha256", tid)]
    if not hashes or not all(_HEX64.match(h) for h in hashes):
        raise ValueError(f"tenant {tid!r}: key_sha256 must list hex SHA-256 digests")
    namespaces = _str_list(table, "namespaces", tid)
    if any("/" in ns or not ns for ns in namespaces):
        raise ValueError(f"tenant {tid!r}: namespaces are non-empty names without '/'")
    limits = TenantLimits(
        max_concurrent_requests=table.get("max_concurrent_requests"),
        requests_per_minute=table.get("requests_per_minute"),
        tokens_per_minute=table.get("tokens_per_minute"),
    )
    return Tenant(
        id=tid,
        key_hashes=tuple(bytes.fromhex(h) for h in hashes),
        namespaces=frozenset(namespaces),
        adapters=tuple(_str_list(table, "adapters", tid)),
        limits=limits,
    )
