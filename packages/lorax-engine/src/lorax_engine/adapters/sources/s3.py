"""Adapters from S3 (``s3://bucket/prefix``); needs the optional ``boto3`` (``lorax-engine[s3]``)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from lorax_engine.adapters.errors import (
    AdapterIncompatibleError,
    AdapterLoadError,
    AdapterNotFoundError,
    AdapterRequestError,
)
from lorax_engine.adapters.peft_loader import (
    CONFIG_NAME,
    MAX_CONFIG_BYTES,
    PICKLE_NAMES,
    TEMPLATE_NAMES,
    WEIGHTS_NAME,
)
from lorax_engine.adapters.ref import AdapterRef
from lorax_engine.adapters.sources.base import FetchedAdapter

_NOT_FOUND_CODES = {"NoSuchBucket", "NoSuchKey", "404", "AccessDenied", "403", "AllAccessDisabled"}


class S3Source:
    """Downloads ``adapter_config.json`` and the safetensors weights under an S3 prefix.

    Credentials and region come from boto3's usual chain (environment, config files, instance
    role); ``endpoint_url`` (or ``AWS_ENDPOINT_URL``) points at any S3-compatible store. Files land
    in ``cache_dir`` under a name derived from the object's ETag, so a changed object is fetched
    again and an unchanged one never is. Sizes are checked before downloading.
    """

    def __init__(self, cache_dir: Path, *, max_bytes: int, endpoint_url: str | None = None) -> None:
        self._cache_dir = Path(cache_dir)
        self._max_bytes = max_bytes
        self._endpoint_url = endpoint_url
        self._client: Any = None
        self._lock = threading.Lock()

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import boto3
                except ImportError:
                    raise AdapterLoadError(
                        "the s3 adapter source needs boto3: install lorax-engine[s3]",
                        code="s3_unavailable",
                    ) from None
                self._client = boto3.client("s3", endpoint_url=self._endpoint_url)
            return self._client

    def fetch(self, ref: AdapterRef) -> FetchedAdapter:
        uri = ref.adapter_id or ""
        bucket, prefix = _parse_uri(uri)
        client = self._s3()
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
            objects = {
                o["Key"][len(prefix) :]: o for o in listing.get("Contents", []) if "Key" in o
            }
            config, weights = objects.get(CONFIG_NAME), objects.get(WEIGHTS_NAME)
            if config is None and weights is None:
                raise AdapterNotFoundError(f"adapter {uri!r} not found", code="not_found")
            if weights is None and any(p in objects for p in PICKLE_NAMES):
                raise AdapterLoadError(
                    f"adapter {uri!r} ships only pickled weights; pickles are refused",
                    code="pickle_refused",
                )
            if weights is not None and int(weights.get("Size", 0)) > self._max_bytes:
                raise AdapterIncompatibleError(
                    f"adapter {uri!r} is {weights['Size']} bytes, above the server's limit of "
                    f"{self._max_bytes}",
                    code="too_large",
                )
            # Small optional files come along (templates); oversized ones are left for the loader
            # to miss rather than fetched.
            wanted = {CONFIG_NAME: config, WEIGHTS_NAME: weights}
            for name in TEMPLATE_NAMES:
                o = objects.get(name)
                if o is not None and int(o.get("Size", 0)) <= MAX_CONFIG_BYTES:
                    wanted[name] = o
            present = {n: o for n, o in wanted.items() if o is not None}
            tag = "|".join(
                f"{n}:{o.get('ETag', '')}:{o.get('Size', 0)}" for n, o in present.items()
            )
            target = (
                self._cache_dir / hashlib.sha256(f"{bucket}/{prefix}|{tag}".encode()).hexdigest()
            )
            if not target.is_dir():
                self._download(client, bucket, prefix, list(present), target)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND_CODES:
                raise AdapterNotFoundError(
                    f"adapter {uri!r} not found, or not accessible", code="not_found"
                ) from None
            raise AdapterLoadError(
                f"fetching adapter {uri!r} from S3 failed ({code or 'client error'})",
                code="fetch_failed",
            ) from None
        except BotoCoreError as exc:
            raise AdapterLoadError(
                f"fetching adapter {uri!r} from S3 failed ({exc.__class__.__name__})",
                code="fetch_failed",
            ) from None
        return FetchedAdapter(target)

    def _download(
        self, client: Any, bucket: str, prefix: str, names: list[str], target: Path
    ) -> None:
        # Download into a private temp dir, then rename: concurrent fetches of one adapter never
        # see a half-written directory.
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self._cache_dir, prefix=".partial-"))
        try:
            for name in names:
                client.download_file(bucket, prefix + name, str(tmp / name))
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():  # lost a race to an identical download: fine
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")``."""
    if not uri.startswith("s3://"):
        raise AdapterRequestError(
            f"s3 adapter ids are s3://bucket/prefix URIs, got {uri!r}", code="bad_adapter_id"
        )
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not bucket or not prefix or ".." in prefix.split("/"):
        raise AdapterRequestError(
            f"s3 adapter ids are s3://bucket/prefix URIs, got {uri!r}", code="bad_adapter_id"
        )
    return bucket, prefix + "/"
