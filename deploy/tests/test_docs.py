"""The documentation site: `mkdocs build --strict`, the nav the issue asks for, documented values."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

# The pages of the site, in nav order (issue #8).
PAGES = [
    "index.md",
    "getting-started.md",
    "deployment.md",
    "configuration.md",
    "api.md",
    "client.md",
    "adapters.md",
    "structured-output.md",
    "quantization.md",
    "tenants.md",
    "metrics.md",
    "benchmarks.md",
    "bench.md",
    "internals.md",
]


def _mkdocs_config(repo: Path) -> dict[str, Any]:
    # mkdocs.yml may use `!!python/name:` tags (pymdownx emoji and the like): ignore their values.
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda _loader, _suffix, _node: None)
    return yaml.load((repo / "mkdocs.yml").read_text(), Loader=Loader)


def _nav_files(nav: list[Any]) -> list[str]:
    files: list[str] = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        files.extend(_nav_files(value) if isinstance(value, list) else [value])
    return files


def test_nav_has_every_page_of_the_site(repo: Path) -> None:
    assert _nav_files(_mkdocs_config(repo)["nav"]) == PAGES


def test_site_builds_strict(repo: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=repo,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    for page in PAGES:
        built = "index.html" if page == "index.md" else f"{page.removesuffix('.md')}/index.html"
        assert (site / built).is_file(), page


def test_strict_build_rejects_a_broken_link(repo: Path, tmp_path: Path) -> None:
    # The check above is only worth something if a warning really fails the build.
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\nSee [nothing](no-such-page.md).\n")
    shutil.copy(repo / "mkdocs.yml", tmp_path / "mkdocs.yml")
    config = _mkdocs_config(repo)
    config["nav"] = [{"Home": "index.md"}]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr


def _leaf_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        # Free-form maps (resources, security contexts) are documented as one key.
        if isinstance(value, dict) and value and key not in {"resources"} and "Context" not in key:
            keys.extend(_leaf_keys(value, f"{path}."))
        else:
            keys.append(path)
    return keys


def test_every_chart_value_is_in_the_deployment_docs(repo: Path) -> None:
    values = yaml.safe_load((repo / "charts" / "lorax" / "values.yaml").read_text())
    keys = _leaf_keys(values)
    assert len(keys) > 40
    table = (repo / "docs" / "deployment.md").read_text()
    assert [k for k in keys if f"| `{k}` |" not in table] == []
