"""Tenants over real HTTP: auth, private adapters, limits, usage, reload, no keys in logs."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import openai
import pytest

from lorax_gateway import GatewaySettings
from lorax_gateway.settings import AuthConfig
from lorax_gateway.tenants import hash_key
from lorax_gateway.testing import Served

from .conftest import ServeFactory, synthetic

ACME_KEY = "sk-acme-0123456789abcdef"
GLOBEX_KEY = "sk-globex-fedcba9876543210"


def write_tenants(path: Path, acme_rpm: int = 1000, extra: str = "") -> Path:
    path.write_text(
        f"""
public_adapters = ["org/public"]

[tenants.acme]
key_sha256 = ["{hash_key(ACME_KEY)}"]
namespaces = ["acme"]
adapters = ["acme/private"]
requests_per_minute = {acme_rpm}
max_concurrent_requests = 2

[tenants.globex]
key_sha256 = ["{hash_key(GLOBEX_KEY)}"]
namespaces = ["globex"]
adapters = ["globex/secret"]
tokens_per_minute = 10
{extra}
"""
    )
    return path


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    return write_tenants(tmp_path / "tenants.toml")


@pytest.fixture
def tenant_gateway(gateway_factory: ServeFactory, tenants_file: Path) -> Served:
    settings = GatewaySettings(backend="synthetic", auth=AuthConfig(tenants_file=tenants_file))
    return gateway_factory(settings, synthetic(token_delay_s=0.0))


def test_missing_and_wrong_keys_are_401(tenant_gateway: Served) -> None:
    url = f"{tenant_gateway.url}/generate"
    r = httpx.post(url, json={"inputs": "x"})
    assert r.status_code == 401
    assert r.json()["error_type"] == "authentication"
    assert "x-request-id" in r.headers
    r = httpx.post(url, json={"inputs": "x"}, headers=auth("sk-wrong"))
    assert r.status_code == 401
    # Probes and scrapes stay open.
    assert httpx.get(f"{tenant_gateway.url}/health").status_code == 200
    assert httpx.get(f"{tenant_gateway.url}/metrics").status_code == 200


def test_private_adapters_are_invisible_to_others(tenant_gateway: Served) -> None:
    url = f"{tenant_gateway.url}/generate"
    own = httpx.post(
        url,
        json={"inputs": "x", "parameters": {"adapter_id": "acme/private"}},
        headers=auth(ACME_KEY),
    )
    assert own.status_code == 200
    other = httpx.post(
        url,
        json={"inputs": "x", "parameters": {"adapter_id": "acme/private"}},
        headers=auth(GLOBEX_KEY),
    )
    missing = httpx.post(
        url,
        json={"inputs": "x", "parameters": {"adapter_id": "acme/nothing"}},
        headers=auth(GLOBEX_KEY),
    )
    assert other.status_code == missing.status_code == 404
    # Same words whether the adapter exists or not: nothing is disclosed.
    assert other.json()["error"].replace("acme/private", "X") == missing.json()["error"].replace(
        "acme/nothing", "X"
    )
    merged = httpx.post(
        url,
        json={
            "inputs": "x",
            "parameters": {
                "merged_adapters": {"ids": ["org/public", "acme/private"], "weights": [1, 1]}
            },
        },
        headers=auth(GLOBEX_KEY),
    )
    assert merged.status_code == 404
    public = httpx.post(
        url,
        json={"inputs": "x", "parameters": {"adapter_id": "org/public"}},
        headers=auth(GLOBEX_KEY),
    )
    assert public.status_code == 200


def test_models_lists_only_visible_adapters(tenant_gateway: Served) -> None:
    acme = openai.OpenAI(base_url=f"{tenant_gateway.url}/v1", api_key=ACME_KEY, max_retries=0)
    globex = openai.OpenAI(base_url=f"{tenant_gateway.url}/v1", api_key=GLOBEX_KEY, max_retries=0)
    assert [m.id for m in acme.models.list()] == ["synthetic", "org/public", "acme/private"]
    assert [m.id for m in globex.models.list()] == ["synthetic", "org/public", "globex/secret"]
    with pytest.raises(openai.NotFoundError):
        globex.chat.completions.create(
            model="acme/private", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{tenant_gateway.url}/v1", api_key="bad", max_retries=0
        ).models.list()


def test_requests_per_minute_gives_retry_after(
    gateway_factory: ServeFactory, tmp_path: Path
) -> None:
    path = write_tenants(tmp_path / "t.toml", acme_rpm=2)
    served = gateway_factory(
        GatewaySettings(backend="synthetic", auth=AuthConfig(tenants_file=path))
    )
    url = f"{served.url}/generate"
    codes = [
        httpx.post(url, json={"inputs": "x"}, headers=auth(ACME_KEY)).status_code for _ in range(2)
    ]
    assert codes == [200, 200]
    r = httpx.post(url, json={"inputs": "x"}, headers=auth(ACME_KEY))
    assert r.status_code == 429
    assert r.json()["error_type"] == "overloaded"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # Another tenant is not affected.
    assert httpx.post(url, json={"inputs": "x"}, headers=auth(GLOBEX_KEY)).status_code == 200


def test_tokens_per_minute_and_usage(tenant_gateway: Served) -> None:
    url = f"{tenant_gateway.url}/generate"
    first = httpx.post(url, json={"inputs": "a b c d e f"}, headers=auth(GLOBEX_KEY))
    assert first.status_code == 200  # 6 prompt + 7 generated tokens: over the 10/min budget now
    r = httpx.post(url, json={"inputs": "x"}, headers=auth(GLOBEX_KEY))
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    usage = httpx.get(f"{tenant_gateway.url}/usage", headers=auth(GLOBEX_KEY)).json()
    assert usage["tenant"] == "globex"
    assert (
        usage["requests"],
        usage["prompt_tokens"],
        usage["generated_tokens"],
        usage["rejected"],
    ) == (1, 6, 7, 1)


def test_concurrent_limit(gateway_factory: ServeFactory, tenants_file: Path) -> None:
    served = gateway_factory(
        GatewaySettings(backend="synthetic", auth=AuthConfig(tenants_file=tenants_file)),
        synthetic(token_delay_s=0.05),
    )
    url = f"{served.url}/generate_stream"
    body = {"inputs": "a b c d e f g h"}
    with (
        httpx.Client() as c,
        c.stream("POST", url, json=body, headers=auth(ACME_KEY)) as s1,
        c.stream("POST", url, json=body, headers=auth(ACME_KEY)) as s2,
    ):
        assert s1.status_code == s2.status_code == 200
        r = c.post(url, json=body, headers=auth(ACME_KEY))
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
    deadline = time.monotonic() + 5
    while served.backend.active and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.02)
    assert (
        httpx.post(
            f"{served.url}/generate", json={"inputs": "x"}, headers=auth(ACME_KEY)
        ).status_code
        == 200
    )


def test_reload_adds_keys_and_keeps_state(tenant_gateway: Served, tenants_file: Path) -> None:
    new_key = "sk-initech-1111"
    url = f"{tenant_gateway.url}/generate"
    assert httpx.post(url, json={"inputs": "x"}, headers=auth(new_key)).status_code == 401
    httpx.post(url, json={"inputs": "a b c d e f"}, headers=auth(GLOBEX_KEY))
    write_tenants(
        tenants_file,
        extra=f'[tenants.initech]\nkey_sha256 = ["{hash_key(new_key)}"]\n',
    )
    registry = tenant_gateway.app.state["tenants"]
    registry.reload()
    assert httpx.post(url, json={"inputs": "x"}, headers=auth(new_key)).status_code == 200
    # globex's token window survived the reload.
    assert httpx.post(url, json={"inputs": "x"}, headers=auth(GLOBEX_KEY)).status_code == 429
    # A broken file keeps the current tenants.
    tenants_file.write_text("[tenants.bad]\nkey_sha256 = ['nothex']\n")
    with pytest.raises(ValueError, match="key_sha256"):
        registry.reload()
    assert httpx.post(url, json={"inputs": "x"}, headers=auth(new_key)).status_code == 200


def test_keys_never_in_logs_or_metrics(
    tenant_gateway: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "hf_supersecret_token"
    httpx.post(
        f"{tenant_gateway.url}/generate",
        json={"inputs": "x", "parameters": {"adapter_id": "acme/private", "api_token": token}},
        headers=auth(ACME_KEY),
    )
    httpx.post(f"{tenant_gateway.url}/generate", json={"inputs": "x"}, headers=auth("sk-wrong-key"))
    metrics = httpx.get(f"{tenant_gateway.url}/metrics").text
    logs = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert 'tenant="acme"' in metrics
    assert "acme" in logs  # the request was logged, by tenant id
    for secret in (ACME_KEY, "sk-wrong-key", token, hash_key(ACME_KEY)):
        assert secret not in metrics
        assert secret not in logs
