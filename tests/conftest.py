"""Shared fixtures: a real `backupfs` process per command, against real directories.

Fixtures only: test modules import helpers from `support` (tools/support), never this module by
name (tests/backends has a conftest of its own).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import CLI, PASSWORD


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

