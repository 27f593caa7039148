"""Dockerfile and .dockerignore parsing for the deployment tests.

No Docker engine runs on CI, so the images are checked by reading their Dockerfiles: a small parser
that understands what our Dockerfiles use (continuation lines, comments, parser directives, exec-form
JSON, `ARG` defaults substituted into `FROM`).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)
class Instruction:
    """One Dockerfile instruction: keyword (upper case) and its raw argument text."""

    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON (exec-form) argument list; fails the test on shell form."""
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} must use the exec (JSON) form"
        return [str(item) for item in value]


@dataclass(slots=True)
class Stage:
    """A build stage: its base image (ARGs substituted), its name and its instructions."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list[Instruction])

    def all(self, keyword: str) -> list[Instruction]:
        """Every instruction of this keyword, in order."""
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        """The effective (last) instruction of this keyword; fails the test if there is none."""
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """Variables set by ENV (key=value form) in this stage."""
        result: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV must use key=value: {instruction.args!r}"
                result[key] = value
        return result


@dataclass(slots=True)
class Dockerfile:
    """A parsed Dockerfile: global ARG defaults and its stages."""

    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        """The stage the image runs."""
        return self.stages[-1]

    def healthcheck_command(self) -> list[str]:
        """The final stage's HEALTHCHECK command (exec form), options stripped."""
        text = self.final.last("HEALTHCHECK").args
        _options, sep, command = text.partition("CMD ")
        assert sep, "HEALTHCHECK must run a command"
        return json.loads(command)

    def run_commands(self) -> list[str]:
        """Every RUN of every stage, BuildKit `--mount` options stripped."""
        commands: list[str] = []
        for stage in self.stages:
            for instruction in stage.all("RUN"):
                commands.append(re.sub(r"^(--mount=\S+\s+)+", "", instruction.args))
        return commands


def _substitute(text: str, args: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in args, f"undefined ARG {name}"
        return args[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Parse `path` into stages of instructions (see the module docstring for what is supported)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            # Comments and blank lines may sit inside a continued instruction; they end nothing.
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = " ".join(args.split())
        if keyword == "FROM":
            parts = _substitute(args, global_args).split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"{path}: only ARG may precede the first FROM"
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return Dockerfile(path=path, global_args=global_args, stages=stages)


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob (`*`, `?`, `**`) as a regex over a slash-separated path."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


@dataclass(slots=True)
class DockerIgnore:
    """Rules of a .dockerignore file; the last matching rule wins, `!` re-includes."""

    rules: list[tuple[bool, re.Pattern[str]]]

    @classmethod
    def load(cls, path: Path) -> DockerIgnore:
        rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            rules.append((include, _ignore_regex(line.lstrip("!").strip("/"))))
        return cls(rules)

    def sends(self, path: str) -> bool:
        """Whether `path` (relative to the build context) reaches the build."""
        parts = path.strip("/").split("/")
        # A rule matching a parent directory applies to everything under it.
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        sent = True
        for include, regex in self.rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                sent = include
        return sent
