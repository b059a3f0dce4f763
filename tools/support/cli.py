"""The command line as a user runs it: a real `python -m backupfs` process per command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
