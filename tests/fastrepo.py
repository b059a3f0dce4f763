"""Repositories initialised with a cheap key derivation, for tests that run the CLI many times.

Argon2id at its default (64 MiB, 3 passes) costs about 0.3 s of CPU in every command, which is
most of a short command's run time. The key-derivation cost is not what those tests are about;
`init` itself and the password tests keep the real default (conftest's `cli` fixture).
"""

from __future__ import annotations

from pathlib import Path

from support.cli import PASSWORD

from backupfs.backends.local import LocalBackend
from backupfs.repository.repo import Repository

FAST_KDF = (1, 8 * 1024 * 1024)  # Argon2id ops, mem: the cheapest sane setting


def init_fast(repo: Path) -> None:
    Repository.init(LocalBackend(str(repo)), PASSWORD.encode(), kdf=FAST_KDF).close()
