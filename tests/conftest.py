"""Shared fixtures: a real `backupfs` process per command, against real directories."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

PASSWORD = "correct horse battery staple"


class CLI:
    """Runs the real command line in a subprocess, as a user would (exit codes, stderr)."""

    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.repo = repo
        self.env = env

    def run(
        self,
        *args: str | os.PathLike[str],
        input: bytes | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[bytes]:
        full_env = {**self.env, **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "backupfs", "-r", str(self.repo), *map(str, args)],
            input=input,
            capture_output=True,
            env=full_env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"backupfs {' '.join(map(str, args))} exited {proc.returncode}\n"
                f"stdout: {proc.stdout.decode(errors='replace')[-2000:]}\nstderr: {proc.stderr.decode(errors='replace')[-4000:]}"
            )
        return proc

    def __call__(self, *args: str | os.PathLike[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
        return self.run(*args, **kw)  # type: ignore[arg-type]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPFS_")}
    env["BACKUPFS_PASSWORD"] = PASSWORD
    env["HOME"] = str(tmp_path / "home")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    return env


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    """A CLI bound to a fresh, initialised repository at tmp_path/repo."""
    c = CLI(tmp_path / "repo", cli_env)
    c.run("init")
    return c


@pytest.fixture
def make_cli(cli_env: dict[str, str]) -> Callable[[Path], CLI]:
    return lambda repo: CLI(repo, cli_env)


def repo_files(repo: Path) -> list[Path]:
    return sorted(p for p in repo.rglob("*") if p.is_file())
