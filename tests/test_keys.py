"""Key files with hostile cost parameters: anyone who can write to the storage can add one, and
every command would pay its Argon2id cost before trying the real key.

Out-of-range files are skipped with a warning naming them (never derived), in-range key files are
tried cheapest first, and `--key-hint` / BACKUPFS_KEY_HINT puts one key first. Which keys were
tried is observed by recording the real key derivations.
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastrepo import FAST_KDF, init_fast
from support.cli import CLI, PASSWORD

from backupfs import crypto
from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.compress import NONE
from backupfs.crypto import MasterKey, file_id, kdf_cost, wrap_master_key
from backupfs.errors import IntegrityError, WrongPassword
from backupfs.format.keyfile import META_AAD, KeyFile, encode_meta, key_aad
from backupfs.repository.repo import Repository

GiB = 1 << 30


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    init_fast(tmp_path / "repo")
    return tmp_path / "repo"


def real_key(repo_path: Path) -> str:
    ((name, _),) = LocalBackend(str(repo_path)).list(FileType.KEY)
    return name


def plant_key(
    repo_path: Path,
    password: bytes,
    kdf: tuple[int, int],
    *,
    claims: tuple[int, int] | None = None,
    sorts: Callable[[str], bool] = lambda _name: True,
) -> str:
    """A key file wrapping the real master key under `password` with `kdf`; `claims` overwrites
    the parameters it declares afterwards (a hostile edit). Salts are drawn until the file's name
    satisfies `sorts` (names are content hashes: this is how a test picks the directory order)."""
    repo = Repository.open(LocalBackend(str(repo_path)), PASSWORD.encode())
    try:
        while True:
            wrapped = wrap_master_key(repo.master, password, key_aad(repo.header.repo_id), *kdf)
            if claims is not None:
                wrapped["ops"], wrapped["mem"] = claims
            meta = repo._seal(encode_meta(socket.gethostname(), getpass.getuser(), time.time_ns()), META_AAD, NONE)
            data = KeyFile(wrapped, meta).encode()
            name = file_id(data)
            if sorts(name):
                repo.backend.save(FileType.KEY, name, data)
                return name
    finally:
        repo.close()


@pytest.fixture
def derivations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(ops, mem) of every Argon2id derivation, in order; the derivations themselves are real."""
    seen: list[tuple[int, int]] = []
    real = crypto.derive_wrapping_key

    def derive(password: bytes, salt: bytes, ops: int, mem: int) -> bytes:
        seen.append((ops, mem))
        return real(password, salt, ops, mem)

    monkeypatch.setattr(crypto, "derive_wrapping_key", derive)
    return seen


def test_accepted_range() -> None:
    fields: dict[str, object] = {"kdf": "argon2id"}
    for ops, mem in [(1, 8 * 1024), (3, 64 << 20), (10, GiB)]:
        assert kdf_cost({**fields, "ops": ops, "mem": mem}) == ops * mem
    for ops, mem in [(11, 64 << 20), (64, 8 * GiB), (3, GiB + 1), (0, 64 << 20), (3, 4096)]:
        with pytest.raises(IntegrityError, match="outside the accepted"):
            kdf_cost({**fields, "ops": ops, "mem": mem})
    with pytest.raises(ValueError):  # init and key add cannot write what open refuses
        wrap_master_key(MasterKey.generate(), b"pw", b"aad", 64, 8 * GiB)
    assert kdf_cost({**fields, "ops": crypto.ARGON2_OPS, "mem": crypto.ARGON2_MEM}) > 0


def test_out_of_range_key_file_is_never_derived(repo_path: Path, derivations: list[tuple[int, int]]) -> None:
    """8 GiB x 64 passes would cost minutes and 8 GiB of memory before the real key is tried."""
    hostile = plant_key(repo_path, b"whatever", FAST_KDF, claims=(64, 8 * GiB))
    derivations.clear()
    warnings: list[str] = []
    repo = Repository.open(LocalBackend(str(repo_path)), PASSWORD.encode(), warn=warnings.append)
    repo.close()
    assert derivations == [FAST_KDF]
    assert len(warnings) == 1 and hostile[:8] in warnings[0] and "64 passes" in warnings[0]
    assert f"key remove {hostile[:8]}" in warnings[0]

    derivations.clear()
    with pytest.raises(WrongPassword, match=hostile[:8]):  # named, even when nothing opens
        Repository.open(LocalBackend(str(repo_path)), b"not the password")
    assert derivations == [FAST_KDF]


def test_key_files_are_tried_cheapest_first(repo_path: Path, derivations: list[tuple[int, int]]) -> None:
    """An in-range but costly key file, listed first, does not delay the cheap key's password."""
    real = real_key(repo_path)
    costly = (4, 64 << 20)
    plant_key(repo_path, b"second password", costly, sorts=lambda name: name < real)
    derivations.clear()
    Repository.open(LocalBackend(str(repo_path)), PASSWORD.encode()).close()
    assert derivations == [FAST_KDF]
    derivations.clear()
    Repository.open(LocalBackend(str(repo_path)), b"second password").close()
    assert derivations == [FAST_KDF, costly]


def test_key_hint_is_tried_first(repo_path: Path, derivations: list[tuple[int, int]]) -> None:
    second_kdf = (2, 8 << 20)
    second = plant_key(repo_path, b"second password", second_kdf)
    derivations.clear()
    opened = Repository.open(LocalBackend(str(repo_path)), b"second password", key_hint=second[:8])
    assert opened.key_name == second
    opened.close()
    assert derivations == [second_kdf]

    derivations.clear()
    warnings: list[str] = []
    Repository.open(LocalBackend(str(repo_path)), PASSWORD.encode(), key_hint="ffff", warn=warnings.append).close()
    assert warnings == ["key hint 'ffff' matches no usable key file; trying them all"]


def test_cli_key_hint_and_warning(repo_path: Path, cli_env: dict[str, str]) -> None:
    cli = CLI(repo_path, cli_env)
    real = real_key(repo_path)
    hostile = plant_key(repo_path, b"x", FAST_KDF, claims=(64, 8 * GiB), sorts=lambda name: name > real)
    proc = cli("snapshots", "--key-hint", real[:8])
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and err.startswith(f"warning: key file {hostile[:8]} skipped"), err
    proc = cli("snapshots", env={"BACKUPFS_KEY_HINT": "0000000z"})
    assert "key hint '0000000z' matches no usable key file" in proc.stderr.decode()
    cli("key", "remove", hostile[:8])
    assert cli("snapshots").stderr == b""
