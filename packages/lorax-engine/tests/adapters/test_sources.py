"""Sources: local roots refuse escapes, S3 against a real S3 API server on loopback, hub errors."""

from __future__ import annotations

import http.server
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lorax_engine.adapters import (
    AdapterError,
    AdapterIncompatibleError,
    AdapterLoadError,
    AdapterNotFoundError,
    AdapterRef,
    AdapterRequestError,
    HubSource,
    LoadLimits,
    LocalSource,
    S3Source,
    load_peft_lora,
)
from lorax_engine.adapters.peft_loader import (
    PICKLE_NAMES,
    TEMPLATE_NAMES,
    WEIGHTS_NAME,
    read_chat_template,
)
from lorax_engine.adapters.ref import split_revision

from .conftest import Spec, upload_dir
from .fakehub import FakeHub


def _local(adapter_id: str) -> AdapterRef:
    return AdapterRef(adapter_id, source="local")


def _code(exc_type: type[AdapterError], fn: Callable[[], object]) -> str:
    with pytest.raises(exc_type) as info:
        fn()
    return info.value.code


# ---- local ----------------------------------------------------------------------------------


def test_local_relative_and_absolute_ids(tmp_path: Path, make_adapter: Callable[..., Path]) -> None:
    root = tmp_path
    d = make_adapter("team/a")
    source = LocalSource([root / "elsewhere", root])
    assert source.fetch(_local("team/a")).directory == d.resolve()
    assert source.fetch(_local(str(d))).directory == d.resolve()


def test_local_escapes_are_refused(tmp_path: Path, make_adapter: Callable[..., Path]) -> None:
    outside = make_adapter("outside")
    root = tmp_path / "root"
    root.mkdir()
    source = LocalSource([root])
    assert _code(AdapterRequestError, lambda: source.fetch(_local("../outside"))) == "path_escape"
    assert _code(AdapterRequestError, lambda: source.fetch(_local(str(outside)))) == "path_escape"
    assert _code(AdapterRequestError, lambda: source.fetch(_local("/etc"))) == "path_escape"
    # A symlinked directory inside the root that points outside it.
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert _code(AdapterRequestError, lambda: source.fetch(_local("link"))) == "path_escape"
    # A real directory whose weights file is a symlink to outside.
    inner = root / "inner"
    inner.mkdir()
    shutil.copy(outside / "adapter_config.json", inner)
    (inner / WEIGHTS_NAME).symlink_to(outside / WEIGHTS_NAME)
    assert _code(AdapterRequestError, lambda: source.fetch(_local("inner"))) == "path_escape"


def test_local_missing_and_disabled(tmp_path: Path) -> None:
    assert (
        _code(AdapterNotFoundError, lambda: LocalSource([tmp_path]).fetch(_local("nope")))
        == "not_found"
    )
    assert (
        _code(AdapterRequestError, lambda: LocalSource([]).fetch(_local("x"))) == "local_disabled"
    )


# ---- s3 (moto in server mode: a real S3 HTTP API on 127.0.0.1) -------------------------------


def test_s3_fetch_loads_the_same_weights(
    tmp_path: Path, s3_endpoint: str, bucket: Any, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    client, name = bucket
    d = make_adapter()
    (d / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    upload_dir(client, name, "org/lora", d)
    source = S3Source(tmp_path / "cache", max_bytes=1 << 30, endpoint_url=s3_endpoint)
    fetched = source.fetch(AdapterRef(f"s3://{name}/org/lora", source="s3"))
    got = load_peft_lora(fetched.directory, "k", spec, LoadLimits())
    want = load_peft_lora(d, "k", spec, LoadLimits())
    assert got.equal(want)
    assert read_chat_template(fetched.directory, "x") == "{{ messages[0]['content'] }}"
    # A second fetch of the unchanged object uses the disk cache (same directory, no new files).
    again = source.fetch(AdapterRef(f"s3://{name}/org/lora/", source="s3"))
    assert again.directory == fetched.directory
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_s3_failures(
    tmp_path: Path, s3_endpoint: str, bucket: Any, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    client, name = bucket
    source = S3Source(tmp_path / "cache", max_bytes=1 << 30, endpoint_url=s3_endpoint)

    def fetch(uri: str) -> object:
        return source.fetch(AdapterRef(uri, source="s3"))

    assert _code(AdapterNotFoundError, lambda: fetch(f"s3://{name}/missing")) == "not_found"
    assert _code(AdapterNotFoundError, lambda: fetch("s3://no-such-bucket-xyz/a")) == "not_found"
    assert _code(AdapterRequestError, lambda: fetch("https://example.com/a")) == "bad_adapter_id"
    assert _code(AdapterRequestError, lambda: fetch(f"s3://{name}/../x")) == "bad_adapter_id"

    d = make_adapter()
    torch.save({"x": torch.zeros(1)}, d / "adapter_model.bin")
    client.upload_file(str(d / "adapter_config.json"), name, "pickled/adapter_config.json")
    client.upload_file(str(d / "adapter_model.bin"), name, "pickled/adapter_model.bin")
    assert _code(AdapterLoadError, lambda: fetch(f"s3://{name}/pickled")) == "pickle_refused"

    upload_dir(client, name, "big", make_adapter())
    small = S3Source(tmp_path / "cache2", max_bytes=100, endpoint_url=s3_endpoint)
    with pytest.raises(AdapterIncompatibleError) as info:
        small.fetch(AdapterRef(f"s3://{name}/big", source="s3"))
    assert info.value.code == "too_large"
    assert not (tmp_path / "cache2").exists()  # refused before downloading anything

    client.put_object(
        Bucket=name, Key="corrupt/adapter_config.json", Body=b'{"r": 8, "lora_alpha": 16}'
    )
    client.put_object(Bucket=name, Key=f"corrupt/{WEIGHTS_NAME}", Body=b"\x00" * 64)
    fetched = source.fetch(AdapterRef(f"s3://{name}/corrupt", source="s3"))
    with pytest.raises(AdapterLoadError) as load_info:
        load_peft_lora(fetched.directory, "k", spec, LoadLimits())
    assert load_info.value.code == "corrupt_weights"


def test_s3_unreachable_endpoint(tmp_path: Path) -> None:
    # A port nothing listens on: a connection error, not a crash and not a 404.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = S3Source(tmp_path, max_bytes=1 << 30, endpoint_url=f"http://127.0.0.1:{port}")
    import boto3
    from botocore.config import Config

    source._client = boto3.client(  # no retries: keep the test fast
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
        aws_access_key_id="x",
        aws_secret_access_key="x",
        region_name="us-east-1",
    )
    with pytest.raises(AdapterLoadError) as info:
        source.fetch(AdapterRef("s3://b/a", source="s3"))
    assert info.value.code == "fetch_failed"


# ---- hub ------------------------------------------------------------------------------------


def test_revision_parsing() -> None:
    assert split_revision("org/name") == ("org/name", None)
    assert split_revision("org/name@v2") == ("org/name", "v2")
    with pytest.raises(AdapterRequestError):
        split_revision("org/name@")


def test_hub_passes_token_and_revision(
    monkeypatch: pytest.MonkeyPatch, make_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    d = make_adapter()
    calls: list[dict[str, Any]] = []
    infos: list[dict[str, Any]] = []
    sha = "0123456789abcdef0123456789abcdef01234567"

    def fake_info(api: Any, repo_id: str, **kwargs: Any) -> SimpleNamespace:
        infos.append({"repo_id": repo_id, "token": api.token, **kwargs})
        return SimpleNamespace(sha=sha)

    def fake_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        return str(d)

    monkeypatch.setattr("huggingface_hub.HfApi.repo_info", fake_info)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_download)
    ref = AdapterRef("org/private@abc123", source="hub", api_token="hf_secret")
    source = HubSource(tmp_path)
    assert source.fetch(ref).directory == d
    (info,) = infos
    assert (info["repo_id"], info["revision"], info["token"]) == (
        "org/private",
        "abc123",
        "hf_secret",
    )
    assert info["timeout"] is not None  # the revision lookup is bounded (see the stall test)
    (call,) = calls
    # The files come from the resolved commit, so they cannot change under the download.
    assert (call["repo_id"], call["revision"], call["token"]) == ("org/private", sha, "hf_secret")
    assert not call["local_files_only"]
    # The name -> commit mapping is recorded for the offline fallback, inside the cache only.
    refs = Path(call["cache_dir"]) / "models--org--private" / "refs"
    assert (refs / "abc123").read_text() == sha
    source.fetch(AdapterRef("org/private@../../escape", source="hub", api_token="hf_secret"))
    assert not (Path(call["cache_dir"]) / "escape").exists()
    assert set(call["allow_patterns"]) == {"adapter_config.json", WEIGHTS_NAME, *TEMPLATE_NAMES}
    assert not set(call["allow_patterns"]) & set(PICKLE_NAMES)  # pickles are never downloaded


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    from huggingface_hub.utils import disable_progress_bars

    monkeypatch.delenv("HF_TOKEN", raising=False)  # no server credential: only the request's
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    disable_progress_bars()
    hub = FakeHub()
    try:
        yield hub
    finally:
        hub.close()


def test_hub_download_with_revision_and_credential_scoping(
    tmp_path: Path, fake_hub: FakeHub, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    d = make_adapter()
    fake_hub.add("org/public", d)
    fake_hub.add("org/private", d, token="hf_owner")
    source = HubSource(cache_dir=tmp_path / "hub", endpoint=fake_hub.url)

    public = source.fetch(AdapterRef("org/public@main", source="hub"))
    want = load_peft_lora(d, "k", spec, LoadLimits())
    assert load_peft_lora(public.directory, "k", spec, LoadLimits()).equal(want)
    owner = AdapterRef("org/private", source="hub", api_token="hf_owner", tenant="t1")
    owner_dir = source.fetch(owner).directory
    assert load_peft_lora(owner_dir, "k", spec, LoadLimits()).equal(want)
    assert ("GET", "/api/models/org/private/revision/main", "Bearer hf_owner") in fake_hub.requests
    # huggingface_hub answers a refused credential from its cache when the files are there: the
    # owner's download must not sit in the cache that other credentials read.
    for other in (
        AdapterRef("org/private", source="hub"),
        AdapterRef("org/private", source="hub", api_token="hf_guess", tenant="t1"),
    ):
        with pytest.raises(AdapterNotFoundError) as info:
            source.fetch(other)
        assert "hf_" not in str(info.value)
    # The same token under another tenant: allowed by the hub, kept in a cache of its own.
    other_tenant = AdapterRef("org/private", source="hub", api_token="hf_owner", tenant="t2")
    assert source.fetch(other_tenant).directory != owner_dir
    with pytest.raises(AdapterNotFoundError):
        source.fetch(AdapterRef("org/missing", source="hub"))


def test_hub_errors_do_not_leak_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import RepositoryNotFoundError

    def missing(repo_id: str, **kwargs: Any) -> str:
        url = f"https://hub.invalid/api/models/{repo_id}"
        response = httpx2.Response(401, request=httpx2.Request("GET", url))
        raise RepositoryNotFoundError(
            f"401 for {repo_id} token={kwargs['token']}", response=response
        )

    def offline(repo_id: str, **kwargs: Any) -> str:
        raise OSError(f"connection refused, token={kwargs['token']}")

    def resolved(api: Any, repo_id: str, **kwargs: Any) -> SimpleNamespace:
        return SimpleNamespace(sha=None)

    monkeypatch.setattr("huggingface_hub.HfApi.repo_info", resolved)
    ref = AdapterRef("org/private", source="hub", api_token="hf_secret")
    for fake, kind, code in (
        (missing, AdapterNotFoundError, "not_found"),
        (offline, AdapterLoadError, "fetch_failed"),
    ):
        monkeypatch.setattr("huggingface_hub.snapshot_download", fake)
        with pytest.raises(kind) as info:
            HubSource().fetch(ref)
        assert info.value.code == code
        assert "hf_secret" not in str(info.value)
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__
    assert "hf_secret" not in repr(ref)


class _Stalling(http.server.BaseHTTPRequestHandler):
    """A hub that accepts every request and answers none until the test ends."""

    release = threading.Event()

    def do_GET(self) -> None:
        self.release.wait(30)

    def log_message(self, format: str, *args: object) -> None:
        del format, args


@pytest.fixture
def stalling_hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _Stalling.release.set()
        server.shutdown()
        server.server_close()


def test_stalled_hub_still_serves_the_credentials_own_cache(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fake_hub: FakeHub,
    stalling_hub: str,
    make_adapter: Callable[..., Path],
    spec: Spec,
) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_ETAG_TIMEOUT", 0.5)
    d = make_adapter()
    fake_hub.add("org/private", d, token="hf_owner")
    owner = AdapterRef("org/private", source="hub", api_token="hf_owner", tenant="t1")
    cached = HubSource(tmp_path / "hub", endpoint=fake_hub.url).fetch(owner).directory
    down = HubSource(tmp_path / "hub", endpoint=stalling_hub)
    # The hub stalls: the owner's earlier download is served from its own cache ...
    assert down.fetch(owner).directory == cached
    # ... and nobody else's credential reaches it.
    with pytest.raises(AdapterLoadError) as info:
        down.fetch(AdapterRef("org/private", source="hub", api_token="hf_guess", tenant="t1"))
    assert info.value.code == "fetch_failed"


def test_hub_stall_is_bounded_by_the_hub_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # snapshot_download's own revision lookup has no timeout: this used to wait out the stall.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_ETAG_TIMEOUT", 0.5)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = HubSource(
            tmp_path / "hub", endpoint=f"http://127.0.0.1:{server.server_address[1]}"
        )
        started = time.monotonic()
        with pytest.raises(AdapterLoadError) as info:
            source.fetch(AdapterRef("stall/adapter", source="hub", api_token="hf_secret"))
        elapsed = time.monotonic() - started
    finally:
        _Stalling.release.set()
        server.shutdown()
        server.server_close()
    assert info.value.code == "fetch_failed"
    assert "stall/adapter" in info.value.message
    assert "hf_secret" not in info.value.message
    assert elapsed < 10, elapsed


# ---- chat templates -------------------------------------------------------------------------


def test_adapter_chat_templates(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    import json

    from lorax_engine.adapters import AdapterLoader, HostAdapterCache, MergeSpec, SourceRegistry

    jinja = make_adapter("jinja")
    (jinja / "chat_template.jinja").write_text("J{{ messages }}")
    config = make_adapter("config")
    (config / "tokenizer_config.json").write_text(json.dumps({"chat_template": "C{{ messages }}"}))
    named = make_adapter("named")
    (named / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": [
                    {"name": "tool_use", "template": "T"},
                    {"name": "default", "template": "D"},
                ]
            }
        )
    )
    make_adapter("plain")
    broken = make_adapter("broken")
    (broken / "chat_template.json").write_text("{")
    loader = AdapterLoader(
        SourceRegistry({"local": LocalSource([tmp_path])}),
        spec,
        LoadLimits(),
        HostAdapterCache(1 << 30),
    )

    def template(name: str) -> str | None:
        return loader.chat_template(AdapterRef(name, source="local"))

    assert [template(n) for n in ("jinja", "config", "named", "plain")] == [
        "J{{ messages }}",
        "C{{ messages }}",
        "D",
        None,
    ]
    assert _code(AdapterLoadError, lambda: template("broken")) == "corrupt_config"
    assert (
        loader.chat_template(AdapterRef(merged=MergeSpec(("jinja",), (1.0,)), source="local"))
        is None
    )
    assert loader.chat_template(AdapterRef()) is None
