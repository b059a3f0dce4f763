"""The repository's names and paths (format.md 2), owned here for every backend and the server.

    config                      the only file not named by its content
    keys/<file id>              and index/, snapshots/, locks/ alike
    data/<2 hex>/<file id>      packs fan out by the first two digits of their name

A file id is 64 lowercase hex digits (the unkeyed BLAKE3 of the file's bytes); a name that is
not one can never be a repository file, so it is refused before it reaches any storage (nothing
a caller or a hostile listing supplies can name a path outside the layout). Writers that need a
temporary file (local, sftp, the REST server) put it beside the target under a dot-name that
listings never show and prune sweeps once it is old.

Paths are relative and use "/"; each backend joins them to its own root.
"""

from __future__ import annotations

import re
import secrets
from typing import Final

from backupfs.backends.base import FileType
from backupfs.errors import BackendError

CONFIG_NAME: Final = "config"
# folder name -> file type, for everything but the config
FOLDERS: Final = {t.value: t for t in FileType if t is not FileType.CONFIG}
FANOUT: Final = tuple(f"{i:02x}" for i in range(256))  # the sub-folders of data/
TEMP_MARK: Final = ".tmp-"
_FILE_ID: Final = re.compile(r"[0-9a-f]{64}")
_TEMP_UNIQUE_BYTES: Final = 8  # random, so concurrent writers on any host never collide


def is_valid_name(ftype: FileType, name: str) -> bool:
    """Whether `name` can be a file of this type: "config", or else a file id."""
    if ftype is FileType.CONFIG:
        return name == CONFIG_NAME
    return _FILE_ID.fullmatch(name) is not None


def check_name(ftype: FileType, name: str) -> None:
    """BackendError unless `name` can be a file of this type."""
    if not is_valid_name(ftype, name):
        raise BackendError(f"invalid {ftype.value} file name {name!r}")


def folder(ftype: FileType, name: str) -> str:
    """The folder that holds a (valid) name: "" for the config, data/<2 hex> for packs."""
    if ftype is FileType.CONFIG:
        return ""
    if ftype is FileType.DATA:
        return f"{ftype.value}/{name[:2]}"
    return str(ftype.value)


def path(ftype: FileType, name: str) -> str:
    """The relative path of a file; BackendError for a name no repository file can have."""
    check_name(ftype, name)
    parent = folder(ftype, name)
    return f"{parent}/{name}" if parent else name


def directories() -> list[str]:
    """Every folder of an empty repository, parents before children."""
    top = list(FOLDERS)
    return top + [f"{FileType.DATA.value}/{sub}" for sub in FANOUT]


def belongs(ftype: FileType, parent: str, filename: str) -> bool:
    """Whether a file found in folder `parent` is a repository file of this type.

    Listings yield only these: temporaries, foreign files and files in the wrong folder (which
    a load would never find) stay invisible.
    """
    return is_valid_name(ftype, filename) and folder(ftype, filename) == parent


def is_foreign(parent: str, filename: str) -> bool:
    """Whether a file found in folder `parent` ("" for the repository's root, else a folder of
    the layout or a sub-folder of data/) is neither a repository file nor a writer's temporary:
    something backupfs did not write, which `check` reports and nothing else touches."""
    if is_temporary(filename):
        return False
    if parent == "":
        return filename != CONFIG_NAME
    ftype = FOLDERS.get(parent.split("/", 1)[0])
    return ftype is None or not belongs(ftype, parent, filename)


def foreign_folders(data_subfolders: list[str]) -> list[str]:
    """The folders `list_foreign` looks in: the root, each type's folder, and every sub-folder
    actually found in data/ (names given as found: a stray `data/zz/` is looked in too)."""
    return ["", *FOLDERS, *(f"{FileType.DATA.value}/{sub}" for sub in sorted(data_subfolders))]


def temporary_name(name: str) -> str:
    """A fresh name for writing `name`'s content before it is renamed into place beside it."""
    return f".{name}{TEMP_MARK}{secrets.token_hex(_TEMP_UNIQUE_BYTES)}"


def is_temporary(filename: str) -> bool:
    """Whether a file in a repository folder is a writer's temporary file."""
    return filename.startswith(".") and TEMP_MARK in filename
