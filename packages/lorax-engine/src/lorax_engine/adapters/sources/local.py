"""Adapters from local directories, confined to the roots given by ``--local-adapter-root``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lorax_engine.adapters.errors import AdapterNotFoundError, AdapterRequestError
from lorax_engine.adapters.peft_loader import (
    CONFIG_NAME,
    PICKLE_NAMES,
    TEMPLATE_NAMES,
    WEIGHTS_NAME,
)
from lorax_engine.adapters.ref import AdapterRef
from lorax_engine.adapters.sources.base import FetchedAdapter


class LocalSource:
    """Resolves an id to a directory under one of ``roots``.

    An id is an absolute path or a path relative to a root (tried in order). Everything is
    resolved through ``..`` and symlinks first, the adapter's files included, and refused when it
    lands outside the root: an id must not read arbitrary files of the server. With no roots the
    source is off.
    """

    def __init__(self, roots: Sequence[Path]) -> None:
        self._roots = [Path(r).resolve(strict=False) for r in roots]

    def fetch(self, ref: AdapterRef) -> FetchedAdapter:
        adapter_id = ref.adapter_id or ""
        if not self._roots:
            raise AdapterRequestError(
                "local adapters are disabled on this server (no --local-adapter-root)",
                code="local_disabled",
            )
        if "\0" in adapter_id or not adapter_id:
            raise AdapterRequestError(
                f"invalid local adapter id {adapter_id!r}", code="bad_adapter_id"
            )
        path = Path(adapter_id)
        if path.is_absolute():
            resolved = path.resolve(strict=False)
            roots = [r for r in self._roots if resolved.is_relative_to(r)]
            if not roots:
                raise _escape(adapter_id)
            candidates = [(resolved, roots[0])]
        else:
            candidates = []
            for root in self._roots:
                resolved = (root / path).resolve(strict=False)
                # Refused even if another root would hold it: the id itself tries to climb out.
                if not resolved.is_relative_to(root):
                    raise _escape(adapter_id)
                candidates.append((resolved, root))
        for resolved, root in candidates:
            if resolved.is_dir():
                self._check_files(resolved, root, adapter_id)
                return FetchedAdapter(resolved)
        raise AdapterNotFoundError(f"local adapter {adapter_id!r} not found", code="not_found")

    @staticmethod
    def _check_files(directory: Path, root: Path, adapter_id: str) -> None:
        # The directory may be inside the root while its files are symlinks to elsewhere.
        for name in (CONFIG_NAME, WEIGHTS_NAME, *TEMPLATE_NAMES, *PICKLE_NAMES):
            f = directory / name
            if (f.exists() or f.is_symlink()) and not f.resolve(strict=False).is_relative_to(root):
                raise _escape(adapter_id)


def _escape(adapter_id: str) -> AdapterRequestError:
    return AdapterRequestError(
        f"local adapter {adapter_id!r} resolves outside the configured adapter roots",
        code="path_escape",
    )
