"""The layering of architecture.md 3 holds: the import-linter contracts in pyproject.toml.

They are checked on the source (no module is imported), so an upward import, pyfuse3 outside the
FUSE adapter, argparse outside the CLI or an I/O module in pure code fails the suite, naming the
import and its line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


# In a process of its own: import-linter reconfigures logging, which silenced later tests' caplog.
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))"


def test_every_import_points_down() -> None:
    proc = subprocess.run([sys.executable, "-c", LINT, str(PYPROJECT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


SERVICES = ("ops", "prune", "mount")


def test_services_reach_storage_through_the_repository() -> None:
    """Services list, read, write and delete repository files through `Repository`'s narrow
    methods, never through `repo.backend`: one place sees every storage access and its order."""
    root = PYPROJECT.parent / "backupfs"
    found = [
        f"{path.relative_to(root.parent)}:{node.lineno}"
        for package in SERVICES
        for path in sorted((root / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "backend"
    ]
    assert found == []
