"""How to drive each backup program: one adapter class per tool builds its command lines."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchlib.runner import Run, json_lines, run_cmd

TOOLS = ("backupfs", "restic", "borg")
PASSWORD = "bench-password-not-secret"
# what repositories recorded before a setting was recorded were made with
REPO_KEY_DEFAULTS = {"compression": "lz4"}


@dataclass
class Tool:
    """How to drive one backup program. Subclasses fill in the command lines."""

    name: str
    exe: str
    work: Path
    settings: str = ""

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def available(self) -> bool:
        return bool(self.exe) and shutil.which(self.exe) is not None

    def version_cmd(self) -> list[str]:
        return [self.exe, "--version"]

    def version(self) -> str:
        r = run_cmd(self.version_cmd(), self.env(), timeout=60)
        return (r.stdout or r.stderr).strip()

    def warm(self) -> None:
        """Load the program itself into the page cache (after caches were dropped), so that a measured
        command reads only its data cold, not its own code and libraries."""
        run_cmd(self.version_cmd(), self.env(), timeout=120)

    def has(self, command: str) -> bool:
        """Whether this tool has `command` yet (mount and forget are being written for backupfs)."""
        return True

    def init(self, repo: Path) -> list[str]:
        raise NotImplementedError

    def repo_key(self) -> dict[str, str]:
        """Init settings a reused repository must have been made with (recorded in repos/state.json)."""
        return {}

    def made_with(self, key: dict[str, str]) -> bool:
        """Whether a repository recorded with `key` has this tool's settings (absent = the old default)."""
        return all(key.get(k, REPO_KEY_DEFAULTS.get(k)) == v for k, v in self.repo_key().items())

    def backup(self, repo: Path, path: Path, name: str) -> list[str]:
        raise NotImplementedError

    def snapshot_id(self, run: Run, name: str) -> str:
        raise NotImplementedError

    def restore(self, repo: Path, snap: str, target: Path) -> tuple[list[str], Path | None]:
        raise NotImplementedError

    def check(self, repo: Path, read_data: bool) -> list[str]:
        raise NotImplementedError

    def mount(self, repo: Path, mnt: Path) -> list[str]:
        raise NotImplementedError

    def path_in_mount(self, mnt: Path, snap: str, abs_path: Path) -> Path:
        return mnt / "ids" / snap[:8] / str(abs_path).lstrip("/")

    def forget_prune(self, repo: Path, keep_last: int) -> list[list[str]]:
        raise NotImplementedError

    def count_snapshots(self, repo: Path) -> int | None:
        raise NotImplementedError

    def drill(self, repo: Path, snap: str, percent: int, scratch: Path) -> list[str]:
        """Its closest to a restore drill of `percent` of the data (sections/verify.py)."""
        raise NotImplementedError

    def drilled_bytes(self, run: Run, repo_bytes: int, percent: int) -> float:
        """What `drill` read and checked: the share of the repository by default."""
        return repo_bytes * percent / 100

    def restore_verify(self, repo: Path, snap: str, target: Path) -> tuple[list[str], Path | None]:
        """A full restore that checks what it wrote (or the closest the tool has)."""
        raise NotImplementedError


class ResticStyle(Tool):
    """backupfs follows restic's command line, so both build the same commands."""

    def backup(self, repo: Path, path: Path, name: str) -> list[str]:
        return [self.exe, "-r", str(repo), "--json", "backup", str(path)]

    def snapshot_id(self, run: Run, name: str) -> str:
        for obj in json_lines(run.stdout):
            if isinstance(obj, dict) and obj.get("message_type") == "summary":
                return str(obj["snapshot_id"])
        raise RuntimeError(f"no snapshot id in {self.name} output: {run.stdout[-500:]}")

    def restore(self, repo: Path, snap: str, target: Path) -> tuple[list[str], Path | None]:
        return [self.exe, "-r", str(repo), "-q", "restore", snap, "--target", str(target)], None

    def check(self, repo: Path, read_data: bool) -> list[str]:
        return [self.exe, "-r", str(repo), "-q", "check", *(["--read-data"] if read_data else [])]

    def mount(self, repo: Path, mnt: Path) -> list[str]:
        return [self.exe, "-r", str(repo), "mount", str(mnt)]

    def forget_prune(self, repo: Path, keep_last: int) -> list[list[str]]:
        return [[self.exe, "-r", str(repo), "-q", "forget", "--keep-last", str(keep_last), "--prune"]]

    def count_snapshots(self, repo: Path) -> int | None:
        r = run_cmd([self.exe, "-r", str(repo), "--json", "snapshots"], self.env(), timeout=600)
        return next((len(o) for o in json_lines(r.stdout) if isinstance(o, list)), None)

    def drill(self, repo: Path, snap: str, percent: int, scratch: Path) -> list[str]:
        return [self.exe, "-r", str(repo), "-q", "check", f"--read-data-subset={percent}%"]

    def restore_verify(self, repo: Path, snap: str, target: Path) -> tuple[list[str], Path | None]:
        cmd, cwd = self.restore(repo, snap, target)
        return [*cmd, "--verify"], cwd


class Backupfs(ResticStyle):
    compression: str = "lz4"

    def env(self) -> dict[str, str]:
        e = dict(os.environ)
        e.pop("BACKUPFS_PASSWORD_FILE", None)
        e.pop("BACKUPFS_REPOSITORY", None)
        e["BACKUPFS_PASSWORD"] = PASSWORD
        e["XDG_CACHE_HOME"] = str(self.work / "cache" / "backupfs")
        return e

    def available(self) -> bool:
        return bool(self.exe) and os.access(self.exe, os.X_OK)

    def has(self, command: str) -> bool:
        return run_cmd([self.exe, command, "--help"], self.env(), timeout=60).rc == 0

    def init(self, repo: Path) -> list[str]:
        return [self.exe, "-r", str(repo), "init", "--compression", self.compression]

    def repo_key(self) -> dict[str, str]:
        return {"compression": self.compression}

    def drill(self, repo: Path, snap: str, percent: int, scratch: Path) -> list[str]:
        return [
            self.exe,
            "-r",
            str(repo),
            "--json",
            "verify",
            snap,
            "--sample",
            f"{percent}%",
            "--scratch",
            str(scratch),
        ]

    def drilled_bytes(self, run: Run, repo_bytes: int, percent: int) -> float:
        for obj in json_lines(run.stdout):
            if isinstance(obj, dict) and obj.get("message_type") == "summary":
                return float(obj["bytes_verified"])
        raise RuntimeError(f"no summary in backupfs verify output: {run.stdout[-500:]}")


class Restic(ResticStyle):
    def env(self) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        e["RESTIC_PASSWORD"] = PASSWORD
        e["RESTIC_CACHE_DIR"] = str(self.work / "cache" / "restic")
        return e

    def version_cmd(self) -> list[str]:
        return [self.exe, "version"]

    def init(self, repo: Path) -> list[str]:
        # repository format 2 is the one with compression (zstd, mode "auto" by default)
        return [self.exe, "-r", str(repo), "init", "--repository-version", "2"]


class Borg(Tool):
    encryption: str = "repokey"

    def env(self) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
        base = self.work / "cache" / "borg"
        e.update(
            BORG_PASSPHRASE=PASSWORD,
            BORG_BASE_DIR=str(base),
            BORG_CACHE_DIR=str(base / "cache"),
            BORG_CONFIG_DIR=str(base / "config"),
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
        )
        return e

    def init(self, repo: Path) -> list[str]:
        return [self.exe, "init", "--encryption", self.encryption, str(repo)]

    def backup(self, repo: Path, path: Path, name: str) -> list[str]:
        return [self.exe, "create", "--json", "--compression", "lz4", f"{repo}::{name}", str(path)]

    def snapshot_id(self, run: Run, name: str) -> str:
        return name

    def restore(self, repo: Path, snap: str, target: Path) -> tuple[list[str], Path | None]:
        return [self.exe, "extract", f"{repo}::{snap}"], target

    def check(self, repo: Path, read_data: bool) -> list[str]:
        return [self.exe, "check", *(["--verify-data"] if read_data else []), str(repo)]

    def mount(self, repo: Path, mnt: Path) -> list[str]:
        return [self.exe, "mount", "-f", str(repo), str(mnt)]

    def path_in_mount(self, mnt: Path, snap: str, abs_path: Path) -> Path:
        return mnt / snap / str(abs_path).lstrip("/")

    def drill(self, repo: Path, snap: str, percent: int, scratch: Path) -> list[str]:
        return self.check(repo, read_data=True)  # borg 1.x verifies no subset of the data

    def drilled_bytes(self, run: Run, repo_bytes: int, percent: int) -> float:
        return float(repo_bytes)

    def restore_verify(self, repo: Path, snap: str, target: Path) -> tuple[list[str], Path | None]:
        return [self.exe, "extract", "--dry-run", f"{repo}::{snap}"], target  # reads and checks every chunk

    def forget_prune(self, repo: Path, keep_last: int) -> list[list[str]]:
        return [[self.exe, "prune", "--keep-last", str(keep_last), str(repo)], [self.exe, "compact", str(repo)]]

    def count_snapshots(self, repo: Path) -> int | None:
        r = run_cmd([self.exe, "list", "--json", str(repo)], self.env(), timeout=600)
        try:
            obj = json.loads(r.stdout)
        except ValueError:
            return None
        return len(obj["archives"]) if isinstance(obj, dict) and "archives" in obj else None


def find_backupfs(explicit: str | None) -> str:
    """The real backupfs entry point, not a pyenv shim (a bash shim adds ~0.1 s to every command)."""
    if explicit:
        return explicit
    sibling = Path(sys.executable).parent / "backupfs"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which("backupfs") or ""
    if "/shims/" in found:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            real = subprocess.run(["pyenv", "which", "backupfs"], capture_output=True, text=True, timeout=30)
            if real.returncode == 0 and real.stdout.strip():
                return real.stdout.strip()
    return found
