"""Fixtures of the deployment tests: the repository and its parsed image Dockerfiles."""

from __future__ import annotations

from pathlib import Path

import pytest

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
