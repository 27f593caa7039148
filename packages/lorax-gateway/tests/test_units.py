"""Unit tests of the pieces with their own rules: limits windows, tenants file, tool calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorax_gateway.backends.http import HttpBackend
from lorax_gateway.backends.registry import available_backends, load_backend
from lorax_gateway.backends.synthetic import SyntheticBackend
from lorax_gateway.errors import GatewayError
from lorax_gateway.limits import TenantLimiter, TenantLimits
from lorax_gateway.openai_format import parse_tool_calls
from lorax_gateway.settings import AdmissionConfig, AuthConfig, TracingConfig
from lorax_gateway.tenants import TenantRegistry, hash_key


def test_rpm_window_slides_and_retry_after_is_exact() -> None:
    lim = TenantLimiter(TenantLimits(requests_per_minute=2))
    lim.acquire(now=0.0)
    lim.release(0, 0, now=0.0)
    lim.acquire(now=10.0)
    lim.release(0, 0, now=10.0)
    with pytest.raises(GatewayError) as exc:
        lim.acquire(now=30.0)
    assert exc.value.status_code == 429
    assert exc.value.headers["Retry-After"] == "30"  # the request at t=0 leaves at t=60
    lim.acquire(now=60.5)


def test_tpm_retry_after_waits_for_enough_tokens() -> None:
    lim = TenantLimiter(TenantLimits(tokens_per_minute=100))
    for t, tokens in ((0.0, 60), (20.0, 60)):
        lim.acquire(now=t)
        lim.release(tokens, 0, now=t)
    with pytest.raises(GatewayError) as exc:
        lim.acquire(now=30.0)
    # 120 in the window, 100 allowed: the first 60 must leave (t=60), i.e. 30 s from now.
    assert exc.value.headers["Retry-After"] == "30"
    lim.acquire(now=61.0)
    assert lim.usage.prompt_tokens == 120
    assert lim.usage.rejected == 1


def test_concurrency_counts_in_flight() -> None:
    lim = TenantLimiter(TenantLimits(max_concurrent_requests=1))
    lim.acquire(now=0.0)
    with pytest.raises(GatewayError):
        lim.acquire(now=0.0)
    lim.release(1, 1, now=0.0)
    lim.acquire(now=0.0)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[tenants.a]\nkey_sha256 = ["abc"]\n', "key_sha256"),
        (f'[tenants.a]\nkey_sha256 = ["{"0" * 64}"]\nmax_concurrent = 3\n', "unknown keys"),
        (f'[tenants.a]\nkey_sha256 = ["{"0" * 64}"]\nnamespaces = ["x/y"]\n', "namespaces"),
        (
            f'[tenants.a]\nkey_sha256 = ["{"0" * 64}"]\nrequests_per_minute = 0\n',
            "requests_per_minute",
        ),
        (
            f'[tenants.a]\nkey_sha256 = ["{"0" * 64}"]\nnamespaces = ["n"]\n'
            f'[tenants.b]\nkey_sha256 = ["{"1" * 64}"]\nnamespaces = ["n"]\n',
            "owned by",
        ),
        ('[tenants."bad id"]\nkey_sha256 = []\n', "tenant id"),
    ],
)
def test_bad_tenants_files_are_refused(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        TenantRegistry.load(path)


def test_authenticate_and_visibility(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        f'[tenants.a]\nkey_sha256 = ["{hash_key("ka")}", "{hash_key("ka2")}"]\nnamespaces = ["a"]\n'
        f'[tenants.b]\nkey_sha256 = ["{hash_key("kb")}"]\n'
    )
    reg = TenantRegistry.load(path)
    a, b = reg.tenants["a"], reg.tenants["b"]
    assert reg.authenticate("ka") is a
    assert reg.authenticate("ka2") is a
    assert reg.authenticate("kb") is b
    assert reg.authenticate("kc") is None
    assert reg.can_use(a, "a/x")
    assert not reg.can_use(b, "a/x")
    assert not reg.can_use(None, "a/x")
    assert reg.can_use(b, "other/x")
    assert reg.can_use(b, "plain-name")
    assert reg.visible(b, ["a/x", "z/1", "z/1", "q"]) == ["z/1", "q"]


def test_tool_call_parsing() -> None:
    calls = parse_tool_calls('{"name": "get_weather", "arguments": {"city": "Paris"}}')
    assert calls is not None
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert calls[0]["id"].startswith("call_")
    two = parse_tool_calls('[{"name": "a", "parameters": {}}, {"name": "b", "arguments": "{}"}]')
    assert two is not None
    assert [c["function"]["name"] for c in two] == ["a", "b"]
    assert parse_tool_calls("just text") is None
    assert parse_tool_calls('{"no_name": 1}') is None


def test_configs_validate() -> None:
    with pytest.raises(ValueError, match="max_concurrent_requests"):
        AdmissionConfig(max_concurrent_requests=0)
    with pytest.raises(ValueError, match="does not exist"):
        AuthConfig(tenants_file=Path("/nonexistent/tenants.toml"))
    with pytest.raises(ValueError, match="otlp_endpoint"):
        TracingConfig(otlp_endpoint="collector:4318")
    assert not TracingConfig().enabled


def test_backends_load_by_entry_point_name() -> None:
    assert {"local", "http", "openai", "synthetic"} <= set(available_backends())
    backend = load_backend("synthetic", {"adapters": "a/1,a/2", "token_delay_s": 0.5})
    assert isinstance(backend, SyntheticBackend)
    assert backend.config.adapters == ("a/1", "a/2")
    http = load_backend("http", {"engine_urls": "http://a:1,http://b:2"})
    assert isinstance(http, HttpBackend)
    assert list(http.engines) == ["http://a:1", "http://b:2"]
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend("nope", {})
    with pytest.raises(ValueError, match="does not support"):
        load_backend("local", {"model_id": "demo", "no_such_flag": 1})
