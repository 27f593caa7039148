"""docker-compose.yml against the images: services, commands, ports, health, GPU, writable paths.

No Docker engine runs on CI, so the compose file is read as YAML (variables resolved to their
defaults, as `docker compose config` does with an empty environment) and compared with the parsed
Dockerfiles and the real `lorax-gateway` argument parser.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from lorax_engine.cli import build_parser as engine_parser
from lorax_gateway.cli import build_parser as gateway_parser

from .conftest import compose_argv
from .dockerfile_parser import Dockerfile

SERVICES = ("gateway", "engine")


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def _check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    # The Compose specification's JSON schema, as vendored by check-jsonschema.
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_matches_the_compose_specification(repo: Path) -> None:
    result = _check_compose_schema(repo / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_does_catch_mistakes(repo: Path, tmp_path: Path) -> None:
    broken = (repo / "docker-compose.yml").read_text().replace("stop_grace_period:", "stop_grace:")
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = _check_compose_schema(tmp_path / "docker-compose.yml")
    assert result.returncode != 0
    assert "stop_grace" in result.stdout + result.stderr


def test_services_build_the_repository_images(compose: dict[str, Any], repo: Path) -> None:
    services = compose["services"]
    assert set(services) == set(SERVICES)
    for name in SERVICES:
        build = services[name]["build"]
        assert build["context"] == "."
        assert build["dockerfile"] == f"images/{name}/Dockerfile"
        assert (repo / build["dockerfile"]).is_file()
        with (repo / "packages" / f"lorax-{name}" / "pyproject.toml").open("rb") as f:
            version = tomllib.load(f)["project"]["version"]
        assert services[name]["image"] == f"lorax-{name}:{version}"


def test_gateway_command_is_valid_and_points_at_the_engine(
    compose: dict[str, Any], dockerfiles: dict[str, Dockerfile]
) -> None:
    argv = compose_argv(compose, dockerfiles, "gateway")
    assert argv[:2] == ["lorax-gateway", "serve"]
    # The gateway's own parser accepts the command, so every flag name and value is real.
    args = gateway_parser().parse_args(argv[1:])
    assert args.host == "0.0.0.0"
    exposed = int(dockerfiles["gateway"].final.last("EXPOSE").args)
    assert args.port == exposed
    assert compose["services"]["gateway"]["ports"] == [f"{exposed}:{exposed}"]

    engine_port = engine_parser().parse_args(compose_argv(compose, dockerfiles, "engine")[1:]).port
    assert len(args.engine_url) == 1
    url = urlsplit(args.engine_url[0])
    assert url.scheme == "http"
    assert url.hostname == "engine"
    assert url.port == engine_port


def test_engine_command_serves_the_model_on_its_exposed_port(
    compose: dict[str, Any], dockerfiles: dict[str, Dockerfile]
) -> None:
    argv = compose_argv(compose, dockerfiles, "engine")
    assert argv[:2] == ["lorax-engine", "serve"]
    # The engine's own parser accepts the command, so every flag name and value is real.
    args = engine_parser().parse_args(argv[1:])
    exposed = dockerfiles["engine"].final.last("EXPOSE").args
    assert args.port == int(exposed)
    assert args.host == "0.0.0.0"
    # LORAX_MODEL_ID picks the model; without it the built-in demo model is served.
    assert args.model_id == "demo"
    # Serving adapters is the point: GPU slots for them are on by default.
    assert args.max_active_adapters > 0
    engine = compose["services"]["engine"]
    assert engine["expose"] == [exposed]
    # The engine API has no authentication: it must not be published on the host.
    assert "ports" not in engine


def test_engine_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    devices = compose["services"]["engine"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in compose["services"]["gateway"]


def test_gateway_starts_once_the_engine_is_healthy(
    compose: dict[str, Any], dockerfiles: dict[str, Dockerfile]
) -> None:
    gateway = compose["services"]["gateway"]
    assert gateway["depends_on"] == {"engine": {"condition": "service_healthy"}}
    for name in SERVICES:
        # No override: the image's HEALTHCHECK (checked against its port elsewhere) applies.
        assert "healthcheck" not in compose["services"][name]
        assert dockerfiles[name].healthcheck_command()


def test_read_only_containers_can_write_where_they_must(
    compose: dict[str, Any], dockerfiles: dict[str, Dockerfile]
) -> None:
    for name in SERVICES:
        service = compose["services"][name]
        assert service["read_only"] is True
        assert service["tmpfs"] == ["/tmp"]
        assert service["cap_drop"] == ["ALL"]
        assert service["security_opt"] == ["no-new-privileges:true"]
    volumes = compose["services"]["engine"]["volumes"]
    assert volumes == ["lorax-data:/data"]
    assert "lorax-data" in compose["volumes"]
    for variable, path in dockerfiles["engine"].final.env().items():
        if variable.endswith(("_HOME", "_CACHE", "_CACHE_DIR")):
            assert path.startswith("/data/"), f"{variable}={path} is not on the volume"


def test_stop_grace_matches_the_helm_chart(compose: dict[str, Any], repo: Path) -> None:
    # One shutdown budget per component, wherever it is deployed.
    values = yaml.safe_load((repo / "charts" / "lorax" / "values.yaml").read_text())
    for name in SERVICES:
        grace = _seconds(compose["services"][name]["stop_grace_period"])
        assert grace == values[name]["terminationGracePeriodSeconds"], name
