"""backends/layout.py: the one place that says which names and paths a repository has."""

from __future__ import annotations

import pytest

from backupfs.backends import layout
from backupfs.backends.base import FileType
from backupfs.errors import BackendError

ID = "0123456789abcdef" * 4

# (type, name, its relative path, or None when no file of that type can have the name)
CASES = [
    (FileType.CONFIG, "config", "config"),
    (FileType.KEY, ID, f"keys/{ID}"),
    (FileType.DATA, ID, f"data/01/{ID}"),
    (FileType.DATA, "ff" * 32, f"data/ff/{'ff' * 32}"),
    (FileType.INDEX, ID, f"index/{ID}"),
    (FileType.SNAPSHOT, ID, f"snapshots/{ID}"),
    (FileType.LOCK, ID, f"locks/{ID}"),
    (FileType.CONFIG, ID, None),  # the config has one name
    (FileType.CONFIG, "", None),
    (FileType.CONFIG, "config.bak", None),
    (FileType.CONFIG, "../config", None),
    (FileType.KEY, "config", None),
    (FileType.KEY, "", None),
    (FileType.KEY, ID[:63], None),  # too short
    (FileType.KEY, ID + "0", None),  # too long
    (FileType.INDEX, ID.upper(), None),  # ids are lowercase
    (FileType.SNAPSHOT, "zz" * 32, None),  # not hex
    (FileType.LOCK, ID[:62] + "\u0661\u0662", None),  # digits, but not ASCII ones
    (FileType.DATA, ID + "\n", None),
    (FileType.DATA, " " + ID[1:], None),
    (FileType.DATA, "." + ID[1:], None),
    (FileType.DATA, ID[:30] + "/" + ID[31:], None),
    (FileType.DATA, "../" + ID[3:], None),
    (FileType.KEY, "\x00" + ID[1:], None),
]


@pytest.mark.parametrize(("ftype", "name", "expected"), CASES, ids=lambda v: repr(v)[:20])
def test_names_and_paths(ftype: FileType, name: str, expected: str | None) -> None:
    assert layout.is_valid_name(ftype, name) is (expected is not None)
    if expected is None:
        with pytest.raises(BackendError, match="invalid"):
            layout.path(ftype, name)
        with pytest.raises(BackendError, match="invalid"):
            layout.check_name(ftype, name)
    else:
        assert layout.path(ftype, name) == expected
        parent, _, filename = expected.rpartition("/")
        assert layout.belongs(ftype, parent, filename)


def test_listings_see_files_only_where_the_layout_puts_them() -> None:
    assert not layout.belongs(FileType.DATA, "data/ab", ID)  # a pack in the wrong fan-out folder
    assert not layout.belongs(FileType.DATA, "data", ID)  # or in none
    assert not layout.belongs(FileType.KEY, "keys", "README")
    assert not layout.belongs(FileType.KEY, "keys", layout.temporary_name(ID))


def test_temporary_names() -> None:
    a, b = layout.temporary_name(ID), layout.temporary_name(ID)
    assert a != b  # concurrent writers of one name never share a temporary file
    assert a.startswith(f".{ID}{layout.TEMP_MARK}") and layout.is_temporary(a)
    assert not layout.is_valid_name(FileType.DATA, a)
    assert not layout.is_temporary(ID) and not layout.is_temporary("config")
    assert layout.directories()[: len(layout.FOLDERS)] == ["keys", "data", "index", "snapshots", "locks", "verify"]
    assert len(layout.directories()) == len(layout.FOLDERS) + 256
