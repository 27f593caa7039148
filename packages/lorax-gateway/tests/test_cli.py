"""``lorax-gateway serve`` as a real process (SIGHUP reload, JSON logs) and launcher flags."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from lorax_gateway.cli import build_parser
from lorax_gateway.launcher import build_parser as launcher_parser
from lorax_gateway.launcher import engine_options
from lorax_gateway.tenants import hash_key
from lorax_gateway.testing import free_port

KEY_A = "sk-first-key-aaaa"
KEY_B = "sk-second-key-bbbb"


def tenants(path: Path, key: str) -> None:
    path.write_text(f'[tenants.acme]\nkey_sha256 = ["{hash_key(key)}"]\n')


def test_serve_sighup_reload_and_json_logs(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    tenants(path, KEY_A)
    port = free_port()
    log = tmp_path / "log.txt"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lorax_gateway.cli",
                "serve",
                "--backend",
                "synthetic",
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--tenants-file",
                str(path),
                "--json-output",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.05)

            def gen(key: str) -> int:
                return httpx.post(
                    f"{url}/generate",
                    json={"inputs": "x"},
                    headers={"Authorization": f"Bearer {key}"},
                ).status_code

            assert (gen(KEY_A), gen(KEY_B)) == (200, 401)
            tenants(path, KEY_B)
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while gen(KEY_B) != 200:
                assert time.monotonic() < deadline, "SIGHUP did not reload the tenants"
                time.sleep(0.05)
            assert gen(KEY_A) == 401
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    finished = [line for line in lines if line["message"] == "request finished"]
    assert finished
    assert finished[0]["tenant"] == "acme"
    assert len(finished[0]["request_id"]) == 32
    assert any("tenants" in line["message"] for line in lines)
    text = log.read_text()
    assert KEY_A not in text
    assert KEY_B not in text


def test_serve_needs_an_engine_url() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lorax_gateway.cli", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--engine-url" in proc.stderr


def test_serve_parser_collects_engines_and_options() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--engine-url",
            "http://a:1",
            "--engine-url",
            "http://b:2",
            "--backend-option",
            "health_interval_s=0.25",
        ]
    )
    assert args.engine_url == ["http://a:1", "http://b:2"]
    assert dict(args.backend_option) == {"health_interval_s": 0.25}


def test_launcher_maps_lorax_flags_to_engine_options() -> None:
    args = launcher_parser().parse_args(
        [
            "--model-id",
            "demo",
            "--max-input-length",
            "100",
            "--max-total-tokens",
            "200",
            "--max-active-adapters",
            "8",
            "--max-concurrent-requests",
            "7",
            "--dtype",
            "float32",
            "--quantize",
            "fp8",
            "--num-shard",
            "2",
            "--kv-cache-dtype",
            "fp8",
            "--lora-dtype",
            "fp8",
        ]
    )
    assert engine_options(args) == {
        "model_id": "demo",
        "dtype": "float32",
        "quantize": "fp8",
        "kv_cache_dtype": "fp8",
        "lora_dtype": "fp8",
        "num_shard": 2,
        "max_input_length": 100,
        "max_total_tokens": 200,
        "lora_slots": 8,
        "max_concurrent_requests": 7,
    }
