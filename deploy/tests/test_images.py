"""The container images: hadolint, multi-stage non-root layout, pinning, and what each installs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .dockerfile_parser import Dockerfile, DockerIgnore

IMAGES = ("gateway", "engine")
# The workspace packages each image installs, and the console script it runs.
PACKAGES = {
    "gateway": {"lorax-gateway", "lorax-client"},
    "engine": {"lorax-engine", "lorax-kernels"},
}
SCRIPTS = {"gateway": "lorax-gateway", "engine": "lorax-engine"}
PORTS = {"gateway": 8080, "engine": 8081}
# Nothing CUDA- or torch-shaped belongs in the gateway image.
GPU_STACK = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    hadolint = Path(sys.executable).with_name("hadolint")
    return subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_finds_nothing(image: str, repo: Path) -> None:
    result = _hadolint(repo / "images" / image / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    # The check above is only worth something if the linter really runs and reports.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest tag


@pytest.mark.parametrize("image", IMAGES)
def test_multi_stage_with_unprivileged_runtime(
    image: str, dockerfiles: dict[str, Dockerfile]
) -> None:
    dockerfile = dockerfiles[image]
    assert len(dockerfile.stages) >= 2
    final = dockerfile.final
    user = final.last("USER").args
    uid, _, gid = user.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit(), user
    assert gid.isdigit(), user
    assert int(uid) != 0, user
    assert int(gid) != 0, user
    created = " ".join(run.args for run in final.all("RUN"))
    assert f"--uid {uid}" in created
    assert f"--gid {gid}" in created
    # Build tools stay in the build stage: the runtime gets the finished virtualenv.
    copies = [copy.args for copy in final.all("COPY")]
    assert all(not c.startswith("--from=uv") for c in copies)
    assert any(c.startswith("--from=build /opt/venv") for c in copies)


@pytest.mark.parametrize("image", IMAGES)
def test_base_images_are_pinned(image: str, dockerfiles: dict[str, Dockerfile]) -> None:
    dockerfile = dockerfiles[image]
    names = {stage.name for stage in dockerfile.stages if stage.name}
    for stage in dockerfile.stages:
        if stage.base in names:
            continue
        repository, sep, tag = stage.base.rpartition(":")
        assert sep, f"{stage.base} has no tag"
        assert "/" not in tag, f"{stage.base} has no tag"
        assert re.search(r"\d", tag), f"{stage.base} is not pinned to a version"
        assert repository


@pytest.mark.parametrize("image", IMAGES)
def test_python_version_is_the_one_ci_runs(
    image: str, dockerfiles: dict[str, Dockerfile], repo: Path
) -> None:
    assert (
        dockerfiles[image].global_args["PYTHON_VERSION"]
        == (repo / ".python-version").read_text().strip()
    )


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_port_and_healthcheck_agree(
    image: str, dockerfiles: dict[str, Dockerfile], repo: Path
) -> None:
    final = dockerfiles[image].final
    script = SCRIPTS[image]
    assert final.last("ENTRYPOINT").exec_form() == [script]
    scripts = _pyproject(repo, script)["project"]["scripts"]
    assert script in scripts, f"{script} is not a console script of its package"

    port = PORTS[image]
    assert final.last("EXPOSE").args == str(port)
    command = final.last("CMD").exec_form()
    assert command[0] == "serve"
    assert command[command.index("--port") + 1] == str(port)
    # Listening on loopback only would make the container unreachable.
    assert command[command.index("--host") + 1] == "0.0.0.0"
    probe = " ".join(dockerfiles[image].healthcheck_command())
    assert f"'http://127.0.0.1:{port}/health'" in probe
    assert final.last("STOPSIGNAL").args == "SIGTERM"


def _pyproject(repo: Path, package: str) -> dict[str, dict[str, dict[str, str]]]:
    with (repo / "packages" / package / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _copy_sources(dockerfile: Dockerfile) -> list[str]:
    sources: list[str] = []
    for stage in dockerfile.stages:
        for copy in stage.all("COPY"):
            parts = [p for p in copy.args.split() if not p.startswith("--")]
            if not copy.args.startswith("--from="):
                sources.extend(parts[:-1])
    return sources


@pytest.mark.parametrize("image", IMAGES)
def test_build_context_sends_what_the_build_copies_and_nothing_private(
    image: str,
    dockerfiles: dict[str, Dockerfile],
    dockerignores: dict[str, DockerIgnore],
    repo: Path,
) -> None:
    ignore = dockerignores[image]
    sources = _copy_sources(dockerfiles[image])
    assert sources
    for source in sources:
        assert (repo / source).exists(), f"COPY {source}: not in the repository"
        assert ignore.sends(source), f"COPY {source}: excluded by the dockerignore"
    for package in PACKAGES[image]:
        assert ignore.sends(f"packages/{package}/src/x.py")
    for private in (".venv/bin/python", ".git/config", "packages/lorax-engine/tests/t.py", ".env"):
        assert not ignore.sends(private), private


def _export_command(dockerfile: Dockerfile) -> list[str]:
    for run in dockerfile.run_commands():
        if run.startswith("uv export "):
            return shlex.split(run.split("&&")[0])
    raise AssertionError("no `uv export` in the build")


@pytest.mark.parametrize("image", IMAGES)
def test_locked_requirements_are_what_the_image_needs(
    image: str, dockerfiles: dict[str, Dockerfile], repo: Path, tmp_path: Path
) -> None:
    # Run the build's own export against the real uv.lock and inspect the result.
    command = _export_command(dockerfiles[image])
    assert "--frozen" in command, "the build must not re-resolve: versions come from uv.lock"
    exported_for = {command[i + 1] for i, arg in enumerate(command) if arg == "--package"}
    assert exported_for == PACKAGES[image]
    output = tmp_path / "requirements.txt"
    command[command.index("-o") + 1] = str(output)
    subprocess.run(command, cwd=repo, check=True, capture_output=True, timeout=60)
    pinned = re.findall(
        r"^([A-Za-z0-9_.\-]+)==[^ ;]+(?: ;[^\\]*)? \\$", output.read_text(), re.MULTILINE
    )
    names = {name.lower() for name in pinned}
    assert names, "nothing exported"
    assert "--hash=sha256:" in output.read_text()
    assert not names & {"lorax-gateway", "lorax-client", "lorax-engine", "lorax-kernels"}
    if image == "gateway":
        assert {"litestar", "httpx", "uvicorn"} <= names
        assert not {n for n in names if GPU_STACK.match(n)}, "the gateway must not ship torch/CUDA"
    else:
        assert {"torch", "triton", "transformers", "boto3"} <= names  # boto3: S3 adapters
    # The workspace packages themselves are installed from source, exactly the exported set.
    installs = [r for r in dockerfiles[image].run_commands() if "--no-deps" in r]
    assert len(installs) == 1
    installed = set(re.findall(r"\./packages/([\w-]+)", installs[0]))
    assert installed == PACKAGES[image]


def test_engine_cuda_base_matches_the_locked_torch_wheels(
    dockerfiles: dict[str, Dockerfile], repo: Path
) -> None:
    with (repo / "uv.lock").open("rb") as f:
        lock = tomllib.load(f)
    versions = [p["version"] for p in lock["package"] if p["name"] == "nvidia-cuda-runtime"]
    assert versions, "torch in uv.lock pulls no CUDA runtime wheel"
    locked = tuple(int(x) for x in versions[0].split(".")[:2])
    base = dockerfiles["engine"].final.base
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu[\d.]+", base)
    assert match, f"engine runtime base {base} is not an nvidia/cuda runtime image"
    cuda = (int(match.group(1)), int(match.group(2)))
    # Same CUDA major; the base's minor is the driver floor, at most the wheels' (CUDA minor-version
    # compatibility runs newer 13.x libraries on any 13.x driver; a newer base would only refuse
    # drivers the wheels support).
    assert cuda[0] == locked[0], (cuda, locked)
    assert cuda <= locked, (cuda, locked)
    # The build stage shares the runtime's base, so the copied interpreter finds the same glibc.
    assert dockerfiles["engine"].stages[-2].base == base


def test_gateway_is_slim_python(dockerfiles: dict[str, Dockerfile]) -> None:
    python = dockerfiles["gateway"].global_args["PYTHON_VERSION"]
    assert re.fullmatch(rf"python:{re.escape(python)}-slim-\w+", dockerfiles["gateway"].final.base)


def test_engine_writes_only_under_data(dockerfiles: dict[str, Dockerfile]) -> None:
    env = dockerfiles["engine"].final.env()
    for variable in ("HF_HOME", "LORAX_ENGINE_CACHE", "TRITON_CACHE_DIR", "XDG_CACHE_HOME"):
        assert env[variable].startswith("/data/"), variable
    created = " ".join(run.args for run in dockerfiles["engine"].final.all("RUN"))
    assert "chown lorax:lorax /data" in created
    # Triton builds its kernel launchers with a C compiler at run time.
    assert "gcc" in created
    assert "libc6-dev" in created
