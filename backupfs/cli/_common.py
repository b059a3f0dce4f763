"""What every command shares: repository URL, password, locking, output."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

from backupfs.backends import registry
from backupfs.backends.base import Backend
from backupfs.cli._output import err
from backupfs.errors import BackupfsError, RepositoryNotFound, UsageError
from backupfs.repository.cache import default_cache_dir
from backupfs.repository.repo import Repository


def repo_url(args: argparse.Namespace) -> str:
    url: str | None = args.repo or os.environ.get("BACKUPFS_REPOSITORY")
    if not url:
        file = args.repository_file or os.environ.get("BACKUPFS_REPOSITORY_FILE")
        if file:
            with open(file, encoding="utf-8") as f:
                url = f.read().strip()
    if not url:
        raise UsageError("no repository given: use -r REPO or set BACKUPFS_REPOSITORY")
    return url


def backend_options(args: argparse.Namespace) -> dict[str, str]:
    """`-o key=value` options for the backend (e.g. -o sftp_port=2222), as restic's -o."""
    options: dict[str, str] = {}
    for item in getattr(args, "option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid option {item!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_").replace(".", "_")] = value
    return options


def open_backend(url: str, options: dict[str, str] | None = None) -> Backend:
    return registry.open_backend(url, **(options or {}))


def refuse_deletes(backend: Backend, command: str) -> None:
    """An append-only server refuses every delete: say so before the password, the lock and any
    planning, instead of failing at the first delete half-way through."""
    if backend.info().append_only:
        raise UsageError(
            f"{command} deletes files, which the append-only server {backend.location} refuses; "
            "run it on the server against the repository directory (or use --dry-run)"
        )


def _read_password_source(args: argparse.Namespace) -> bytes | None:
    if getattr(args, "password_command", None) or os.environ.get("BACKUPFS_PASSWORD_COMMAND"):
        cmd = args.password_command or os.environ["BACKUPFS_PASSWORD_COMMAND"]
        proc = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            raise BackupfsError(f"password command failed with exit code {proc.returncode}")
        return proc.stdout.rstrip(b"\r\n")
    file = getattr(args, "password_file", None) or os.environ.get("BACKUPFS_PASSWORD_FILE")
    if file:
        try:
            with open(file, "rb") as f:
                return f.read().rstrip(b"\r\n")
        except OSError as exc:
            raise BackupfsError(f"cannot read password file {file}: {exc.strerror}") from exc
    env = os.environ.get("BACKUPFS_PASSWORD")
    if env is not None:
        return os.fsencode(env)
    return None


def get_password(args: argparse.Namespace, *, confirm: bool = False, prompt: str = "enter password: ") -> bytes:
    pw = _read_password_source(args)
    if pw is None:
        if not sys.stdin.isatty():
            raise UsageError(
                "no password given: set BACKUPFS_PASSWORD, BACKUPFS_PASSWORD_FILE or --password-command, "
                "or run on a terminal"
            )
        pw = getpass.getpass(f"{prompt}").encode()
        if confirm and getpass.getpass("enter password again: ").encode() != pw:
            raise UsageError("passwords do not match")
    if not pw:
        raise UsageError("an empty password is not allowed")
    return pw


def new_password(args: argparse.Namespace) -> bytes:
    """For key add/passwd: --new-password-file, BACKUPFS_NEW_PASSWORD, or a prompt."""
    file = getattr(args, "new_password_file", None)
    if file:
        with open(file, "rb") as f:
            pw = f.read().rstrip(b"\r\n")
    elif "BACKUPFS_NEW_PASSWORD" in os.environ:
        pw = os.fsencode(os.environ["BACKUPFS_NEW_PASSWORD"])
    elif sys.stdin.isatty():
        pw = getpass.getpass("enter new password: ").encode()
        if getpass.getpass("enter new password again: ").encode() != pw:
            raise UsageError("passwords do not match")
    else:
        raise UsageError("no new password given: use --new-password-file or BACKUPFS_NEW_PASSWORD")
    if not pw:
        raise UsageError("an empty password is not allowed")
    return pw


@contextlib.contextmanager
def open_repository(
    args: argparse.Namespace, *, lock: str | None = "shared", load_index: bool = True, deletes: str | None = None
) -> Iterator[Repository]:
    """Opens, unlocks and locks the repository; `lock` is None, 'shared' or 'exclusive'.

    `deletes` names the command when it will delete files: refused at once on an append-only server.
    """
    backend = open_backend(repo_url(args), backend_options(args))
    if not backend.exists():
        raise RepositoryNotFound(f"no repository at {backend.location} (create one with `backupfs init`)")
    if deletes is not None:
        refuse_deletes(backend, deletes)
    repo = Repository.open(
        backend,
        get_password(args),
        cache_dir=cache_dir(args),
        # a local directory needs no local cache of its files (it would only double the disk use)
        cache_files=not backend.info().local,
        key_hint=getattr(args, "key_hint", None) or os.environ.get("BACKUPFS_KEY_HINT"),
        warn=lambda msg: err(f"warning: {msg}"),
    )
    try:
        if lock is not None and not getattr(args, "no_lock", False):
            repo.lock(exclusive=(lock == "exclusive"), retry_for=float(getattr(args, "retry_lock", 0) or 0))
        if load_index:
            repo.load_index()
        yield repo
    finally:
        repo.close()


def cache_dir(args: argparse.Namespace) -> str | None:
    if getattr(args, "no_cache", False):
        return None
    return getattr(args, "cache_dir", None) or os.environ.get("BACKUPFS_CACHE_DIR") or default_cache_dir()


def format_time(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def iso_time(ns: int) -> str:
    sec, frac = divmod(ns, 10**9)
    tm = time.localtime(sec)
    off = time.strftime("%z", tm)
    return time.strftime("%Y-%m-%dT%H:%M:%S", tm) + f".{frac:09d}" + off[:3] + ":" + off[3:]


def parse_size(text: str) -> int:
    """`64M`, `1.5G`, `512k` or a number of bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if m is None:
        raise UsageError(f"invalid size {text!r} (use e.g. 64M, 1G or a number of bytes)")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_"))
