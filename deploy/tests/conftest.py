"""Fixtures of the deployment tests: the repository, its parsed Dockerfiles and compose file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .dockerfile_parser import Dockerfile, DockerIgnore, parse_dockerfile

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("gateway", "engine")


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (the images' build context)."""
    return REPO


@pytest.fixture(scope="session")
def dockerfiles() -> dict[str, Dockerfile]:
    """The parsed image Dockerfiles by image name (`gateway`, `engine`)."""
    return {name: parse_dockerfile(REPO / "images" / name / "Dockerfile") for name in IMAGES}


@pytest.fixture(scope="session")
def dockerignores() -> dict[str, DockerIgnore]:
    """The BuildKit per-Dockerfile ignore rules (`images/<name>/Dockerfile.dockerignore`)."""
    return {
        name: DockerIgnore.load(REPO / "images" / name / "Dockerfile.dockerignore")
        for name in IMAGES
    }


def _interpolate(text: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR-default}` / `${VAR}` with an empty environment."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml with its variables at their defaults (as with an empty environment)."""
    return yaml.safe_load(_interpolate((REPO / "docker-compose.yml").read_text()))


def compose_argv(
    compose: dict[str, Any], dockerfiles: dict[str, Dockerfile], service: str
) -> list[str]:
    """What a compose service's container runs: the image's ENTRYPOINT, then the `command`."""
    command = compose["services"][service]["command"]
    assert isinstance(command, list), "use the list form: no shell between Docker and the server"
    return dockerfiles[service].final.last("ENTRYPOINT").exec_form() + command
