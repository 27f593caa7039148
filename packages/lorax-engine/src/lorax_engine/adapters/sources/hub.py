"""Adapters from the Hugging Face Hub (``org/name`` or ``org/name@revision``)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from lorax_engine.adapters.errors import AdapterLoadError, AdapterNotFoundError
from lorax_engine.adapters.peft_loader import CONFIG_NAME, TEMPLATE_NAMES, WEIGHTS_NAME
from lorax_engine.adapters.ref import AdapterRef, split_revision
from lorax_engine.adapters.sources.base import FetchedAdapter


class HubSource:
    """Downloads an adapter's config and safetensors weights with ``huggingface_hub``.

    The request's ``api_token`` is the credential (without one, the server's own, e.g.
    ``HF_TOKEN``). Downloads made with a credential go to a cache directory of their own per
    ``(tenant, credential)``: ``huggingface_hub`` answers a refused credential from its local cache
    when the files are there, so one shared cache would hand a private adapter to anyone who names
    it after its owner did. A missing repo, revision or a refused credential are one answer (404),
    so a private adapter's existence is not disclosed.

    ``snapshot_download`` asks the hub for the revision's commit without any timeout, so a hub
    that accepts the connection and never answers would hold the fetch for ever. The revision is
    therefore resolved here first, bounded by ``HF_HUB_ETAG_TIMEOUT`` (huggingface_hub's own
    metadata timeout, 10 s by default); the files then download under ``HF_HUB_ETAG_TIMEOUT`` and
    ``HF_HUB_DOWNLOAD_TIMEOUT``. The loader's ``--adapter-load-timeout-s`` bounds the whole.
    """

    def __init__(self, cache_dir: Path | None = None, endpoint: str | None = None) -> None:
        self._cache_dir = cache_dir
        self._endpoint = endpoint

    def cache_dir_for(self, ref: AdapterRef) -> Path | None:
        """The download cache for ``ref``'s credential scope (None: huggingface_hub's default)."""
        if ref.api_token is None:
            return self._cache_dir
        from huggingface_hub import constants

        base = self._cache_dir or Path(constants.HF_HUB_CACHE)
        # A plain hash (stable across restarts, so the disk cache survives them): hub tokens are
        # long random strings, so the directory name cannot be turned back into one.
        scope = hashlib.sha256(f"lorax\0{ref.tenant or ''}\0{ref.api_token}".encode()).hexdigest()
        return base / "lorax-credentialed" / scope[:32]

    def fetch(self, ref: AdapterRef) -> FetchedAdapter:
        from huggingface_hub import HfApi, constants, snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        repo, requested = split_revision(ref.adapter_id or "")
        requested = requested or constants.DEFAULT_REVISION  # as snapshot_download has it
        revision = requested
        label = ref.adapter_id
        unreachable: str | None = None
        try:
            cache_dir = self.cache_dir_for(ref)
            try:
                info = HfApi(endpoint=self._endpoint, token=ref.api_token).repo_info(
                    repo, revision=requested, timeout=constants.HF_HUB_ETAG_TIMEOUT
                )
                revision = info.sha or requested
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status is None or status < 500:
                    raise
                unreachable = f"HTTP {status}"
            except Exception as exc:  # timeouts and network errors of the hub's HTTP client
                unreachable = exc.__class__.__name__
            # With the hub down or stalled, what the credential's own cache holds is still
            # served (snapshot_download does the same when offline).
            path = snapshot_download(
                repo,
                revision=revision,
                local_files_only=unreachable is not None,
                etag_timeout=constants.HF_HUB_ETAG_TIMEOUT,
                cache_dir=cache_dir,
                token=ref.api_token,
                allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, *TEMPLATE_NAMES],
                endpoint=self._endpoint,
            )
            if revision != requested:
                _record_ref(Path(cache_dir or constants.HF_HUB_CACHE), repo, requested, revision)
        except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError):
            raise AdapterNotFoundError(
                f"adapter {label!r} not found on the hub, or not accessible with the given credential",
                code="not_found",
            ) from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403, 404):
                raise AdapterNotFoundError(
                    f"adapter {label!r} not found on the hub, or not accessible with the given "
                    "credential",
                    code="not_found",
                ) from None
            # The exception text may carry request details; only its kind and status leave here.
            raise AdapterLoadError(
                f"downloading adapter {label!r} from the hub failed (HTTP {status})",
                code="fetch_failed",
            ) from None
        except Exception as exc:  # network, disk and validation errors of huggingface_hub
            reason = unreachable or exc.__class__.__name__
            raise AdapterLoadError(
                f"downloading adapter {label!r} from the hub failed ({reason})",
                code="fetch_failed",
            ) from None
        return FetchedAdapter(Path(str(path)))


def _record_ref(cache_dir: Path, repo: str, revision: str, commit: str) -> None:
    """Note in the hub cache that ``revision`` (a branch or tag) points at ``commit``.

    snapshot_download does this itself when it resolves a name, but it is given the commit here
    (resolved with a timeout), so the offline fallback would not find the name otherwise. The
    layout is huggingface_hub's documented cache layout (``models--org--name/refs/<revision>``).
    """
    refs = cache_dir / f"models--{repo.replace('/', '--')}" / "refs"
    target = refs / revision
    if not target.resolve(strict=False).is_relative_to(refs.resolve(strict=False)):
        return  # names come from requests: never a path outside the cache
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and target.read_text() == commit:
            return
        # Atomic, so a concurrent offline lookup never reads a half-written ref.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".ref-")
        with os.fdopen(fd, "w") as f:
            f.write(commit)
        os.replace(tmp, target)
    except OSError:  # best effort, as in huggingface_hub: only the offline fallback needs it
        pass
