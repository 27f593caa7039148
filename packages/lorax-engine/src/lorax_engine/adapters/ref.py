"""What a request asks for: an adapter reference, and the cache key that scopes who may use it."""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lorax_engine.adapters.errors import AdapterRequestError

SOURCES = ("hub", "local", "s3")
MERGE_STRATEGIES = ("linear", "ties", "dare_linear", "dare_ties")
SIGN_METHODS = ("total", "frequency")

# Keys of credentialed adapters carry an HMAC of the credential under a per-process secret: equal
# credentials give equal keys inside this process, and a key that reaches a log or a metric label
# cannot be brute-forced back into the token offline.
_KEY_SECRET = os.urandom(32)


@dataclass(slots=True, frozen=True)
class MergeSpec:
    """``parameters.merged_adapters``: combine several adapters into one (docs/adapters.md)."""

    ids: tuple[str, ...]
    weights: tuple[float, ...]
    merge_strategy: str = "linear"
    density: float = 1.0
    majority_sign_method: str = "total"

    def __post_init__(self) -> None:
        if not self.ids:
            raise AdapterRequestError("merged_adapters.ids must not be empty", code="bad_merge")
        if len(self.ids) != len(self.weights):
            raise AdapterRequestError(
                "merged_adapters.ids and merged_adapters.weights must have the same length",
                code="bad_merge",
            )
        if any(not i for i in self.ids):
            raise AdapterRequestError(
                "merged_adapters.ids must be non-empty strings", code="bad_merge"
            )
        if any(not math.isfinite(w) for w in self.weights):
            raise AdapterRequestError("merged_adapters.weights must be finite", code="bad_merge")
        if self.merge_strategy not in MERGE_STRATEGIES:
            raise AdapterRequestError(
                f"merge_strategy must be one of {', '.join(MERGE_STRATEGIES)}", code="bad_merge"
            )
        if not 0.0 < self.density <= 1.0:
            raise AdapterRequestError("density must be in (0, 1]", code="bad_merge")
        if self.majority_sign_method not in SIGN_METHODS:
            raise AdapterRequestError(
                f"majority_sign_method must be one of {', '.join(SIGN_METHODS)}", code="bad_merge"
            )


@dataclass(slots=True, frozen=True)
class AdapterRef:
    """One request's adapter: an id (or a merge of ids), where to get it, and as whom.

    ``adapter_id=None`` with no ``merged`` is the base model. ``api_token`` never appears in
    ``repr``; use :meth:`cache_key` wherever the adapter must be named in logs or metrics.
    """

    adapter_id: str | None = None
    source: str = "hub"
    api_token: str | None = field(default=None, repr=False)
    tenant: str | None = None
    merged: MergeSpec | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise AdapterRequestError(
                f"adapter_source must be one of {', '.join(SOURCES)}", code="bad_source"
            )
        if self.adapter_id is not None and self.merged is not None:
            raise AdapterRequestError(
                "adapter_id and merged_adapters cannot be used together", code="bad_merge"
            )
        if self.adapter_id == "":
            object.__setattr__(self, "adapter_id", None)

    @property
    def is_base(self) -> bool:
        """True when the request runs the base model without any adapter."""
        return self.adapter_id is None and self.merged is None

    @classmethod
    def from_parameters(
        cls, parameters: Mapping[str, Any], *, tenant: str | None, default_source: str
    ) -> AdapterRef:
        """Build the reference from an engine request's ``parameters`` (API.md)."""
        merged_raw = parameters.get("merged_adapters")
        merged: MergeSpec | None = None
        if merged_raw is not None:
            if not isinstance(merged_raw, Mapping):
                raise AdapterRequestError("merged_adapters must be an object", code="bad_merge")
            try:
                ids = tuple(str(i) for i in merged_raw.get("ids") or ())
                weights = tuple(float(w) for w in merged_raw.get("weights") or ())
                density = float(merged_raw.get("density", 1.0))
            except (TypeError, ValueError):
                raise AdapterRequestError(
                    "merged_adapters: ids must be strings, weights and density numbers",
                    code="bad_merge",
                ) from None
            merged = MergeSpec(
                ids=ids,
                weights=weights,
                merge_strategy=str(merged_raw.get("merge_strategy") or "linear"),
                density=density,
                majority_sign_method=str(merged_raw.get("majority_sign_method") or "total"),
            )
        adapter_id = parameters.get("adapter_id")
        return cls(
            adapter_id=str(adapter_id) if adapter_id else None,
            source=str(parameters.get("adapter_source") or default_source),
            api_token=parameters.get("api_token") or None,
            tenant=tenant,
            merged=merged,
        )

    def component(self, adapter_id: str) -> AdapterRef:
        """The reference of one member of a merge: same source, credential and tenant."""
        return AdapterRef(adapter_id, self.source, self.api_token, self.tenant)

    def scope(self) -> str:
        """Who may be served an adapter loaded for this reference.

        Without a credential the adapter came from a source anyone may read (``public``). With one,
        only requests of the same tenant presenting the same credential share it.
        """
        if self.api_token is None:
            return "public"
        material = f"{self.tenant or ''}\0{self.api_token}".encode()
        return "cred:" + hmac.new(_KEY_SECRET, material, hashlib.sha256).hexdigest()[:32]

    def cache_key(self) -> str:
        """A string naming this adapter in every cache tier; safe to log (no credential)."""
        if self.merged is not None:
            m = self.merged
            parts = [self.component(i).cache_key() for i in m.ids]
            weights = ",".join(repr(w) for w in m.weights)
            return (
                f"merge:{m.merge_strategy}:d={m.density!r}:s={m.majority_sign_method}"
                f":w={weights}:[{'|'.join(parts)}]"
            )
        if self.adapter_id is None:
            return ""
        return f"{self.source}:{self.adapter_id}#{self.scope()}"


def split_revision(adapter_id: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; a hub id without ``@`` has no revision."""
    repo, sep, revision = adapter_id.partition("@")
    if not sep:
        return adapter_id, None
    if not repo or not revision:
        raise AdapterRequestError(
            f"adapter id {adapter_id!r} must be 'repo' or 'repo@revision'", code="bad_adapter_id"
        )
    return repo, revision
