"""Folders that contain themselves (issue 10): a tree id is the keyed hash of its listing, so a real
listing cannot name itself or a folder it lies in; but whoever holds the key can seal any listing
under any id. Every reader loads listings through the repository, which refuses one that does not
hash to its id (architecture.md 1): ls, restore, check and a real FUSE mount name each forged listing
once, with its path, handle the rest, end with exit 4 (or EIO in the mount), and never walk
endlessly or crash; prune and copy, which need every listing, refuse with one line.

The snapshot forged here holds /good.txt, /self (a listing that names itself as its sub-folder
/self/again) and /pair (a genuine listing whose sub-folder /pair/up is forged to name /pair's
listing: a cycle of two); a second snapshot's root listing names itself.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostile import Forge, assert_clean
from mounting import CAN_MOUNT, PASSWORD, SKIP_REASON, Cli, Mount
from test_mount import mount  # noqa: F401 - the fixture, shared with the other mount tests

FORGED = "does not hash to its id"
FORGED_FOLDERS = ["/pair/up", "/self"]  # where the cycles are closed, in the order readers meet them


@dataclass
class Cycles:
    cli: Cli
    base: Path
    sid: str  # /good.txt, /pair, /self
    root_sid: str  # a root listing that names itself
    blobs: dict[str, str]  # forged folder -> the first 16 hex digits of its listing's id


@pytest.fixture(scope="module")
def cycles(tmp_path_factory: pytest.TempPathFactory) -> Cycles:
    base = tmp_path_factory.mktemp("cycles")
    cli = Cli(base)
    f = Forge(cli.repo)
    try:
        self_id, up_id, root_id = (f.repo.blob_id(what) for what in (b"self", b"up", b"root"))
        f.tree([f.folder(b"again", [], st=self_id), f.file(b"inside", b"inside\n")], tree_id=self_id)
        pair_id = f.tree([f.folder(b"up", [], st=up_id)])  # genuine: it hashes to its id
        f.tree([f.folder(b"down", [], st=pair_id)], tree_id=up_id)
        sid = f.snapshot(
            [f.file(b"good.txt", b"good\n"), f.folder(b"pair", [], st=pair_id), f.folder(b"self", [], st=self_id)]
        )
        f.tree([f.folder(b"loop", [], st=root_id)], tree_id=root_id)
        root_sid = f.snapshot_of(root_id)
    finally:
        f.close()
    blobs = {"/pair/up": up_id.hex()[:16], "/self": self_id.hex()[:16], "/": root_id.hex()[:16]}
    return Cycles(cli, base, sid, root_sid, blobs)


def _lines(out: bytes) -> list[str]:
    return out.decode().splitlines()


def _about(line: str, cycles: Cycles, folder: str) -> bool:
    """Whether `line` names the forged listing of `folder` (its blob and why)."""
    return f"blob {cycles.blobs[folder]} {FORGED}" in line


def test_ls_names_each_forged_listing_and_lists_the_rest(cycles: Cycles) -> None:
    proc = cycles.cli("ls", cycles.sid, check=False)
    assert proc.returncode == 4
    assert_clean(proc.stderr)
    assert _lines(proc.stdout) == ["/good.txt", "/pair", "/pair/up", "/self"]  # nothing below a forged one
    *warnings, summary = _lines(proc.stderr)
    assert len(warnings) == len(FORGED_FOLDERS)
    for line, folder in zip(warnings, FORGED_FOLDERS, strict=True):
        assert line.startswith(f"warning: {folder}: cannot be read: its listing: ") and _about(line, cycles, folder)
    assert summary == "backupfs: 2 entries were left out or shown repaired (see the warnings above)"

    for args, folder in (((cycles.sid, "/self"), "/self"), ((cycles.root_sid,), "/")):
        proc = cycles.cli("ls", *args, check=False)
        assert (proc.returncode, proc.stdout) == (4, b"")
        (line,) = _lines(proc.stderr)  # one line, the forged listing's
        assert line.startswith("backupfs: ") and _about(line, cycles, folder), line


def test_restore_refuses_each_forged_listing_and_restores_the_rest(cycles: Cycles) -> None:
    target = cycles.base / "restored"
    proc = cycles.cli("restore", cycles.sid, "--target", target, check=False)
    assert proc.returncode == 4
    assert_clean(proc.stderr)
    errors = [line for line in _lines(proc.stderr) if line.startswith("error: ")]
    assert len(errors) == len(FORGED_FOLDERS)
    for line, folder in zip(errors, FORGED_FOLDERS, strict=True):
        assert line.startswith(f"error: {folder}: cannot read directory listing: ") and _about(line, cycles, folder)
    assert _lines(proc.stderr)[-1] == "backupfs: restore finished with 2 errors"
    # the rest is there, and the forged folders are made empty: nothing repeats below them
    found = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    assert found == ["good.txt", "pair", "pair/up", "self"]
    assert (target / "good.txt").read_bytes() == b"good\n"

    for spec, folder in ((f"{cycles.sid}:/self", "/self"), (cycles.root_sid, "/")):
        empty = cycles.base / f"restored-{folder.strip('/') or 'root'}"
        proc = cycles.cli("restore", spec, "--target", empty, check=False)
        assert proc.returncode == 4
        errors = [line for line in _lines(proc.stderr) if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith("error: /: cannot read directory listing: ")
        assert _about(errors[0], cycles, folder)
        assert list(empty.iterdir()) == []


def test_check_reports_each_forged_listing_and_its_fix(cycles: Cycles) -> None:
    proc = cycles.cli("check", check=False)
    assert proc.returncode == 4
    assert_clean(proc.stderr)
    errors = [line for line in _lines(proc.stderr) if line.startswith("error: ")]
    expected = [(cycles.sid, "/pair/up"), (cycles.sid, "/self"), (cycles.root_sid, "/")]
    assert len(errors) == len(expected), errors
    for sid, folder in expected:
        prefix = f"error: snapshot {sid[:8]}: tree {cycles.blobs[folder]} at {folder}: "
        fix = f" (fix: `backupfs repair snapshots {sid[:8]}`)"
        named = [line for line in errors if line.startswith(prefix) and _about(line, cycles, folder)]
        assert len(named) == 1 and named[0].endswith(fix), (folder, errors)


def test_the_fixes_check_names_make_the_repository_whole(cycles: Cycles, tmp_path: Path) -> None:
    """On a copy: `repair snapshots` keeps each forged folder empty, says that a snapshot whose
    root listing is forged keeps nothing and names `forget` for it; then check passes, and once
    prune has dropped the forged listings (nothing uses them), so does check --read-data."""
    cli = copy.copy(cycles.cli)
    cli.repo = tmp_path / "repo"
    cli.env = {**cycles.cli.env, "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    shutil.copytree(cycles.cli.repo, cli.repo)
    proc = cli("repair", "snapshots", "--forget", cycles.sid[:8], cycles.root_sid[:8], check=False)
    assert proc.returncode == 4
    assert_clean(proc.stderr)
    out = _lines(proc.stdout)
    for folder in FORGED_FOLDERS:
        assert f"  folder {folder}: listing lost, kept empty" in out, out
    assert any(line.startswith(f"snapshot {cycles.root_sid[:8]}: cannot be repaired: ") for line in out), out
    assert f"`backupfs forget {cycles.root_sid[:8]}`" in proc.stderr.decode()
    cli("forget", cycles.root_sid[:8])
    cli("check")
    (repaired,) = json.loads(cli("snapshots", "--json").stdout)
    assert cli("ls", repaired["id"]).stdout.decode().splitlines() == ["/good.txt", "/pair", "/pair/up", "/self"]
    cli("prune")
    cli("check", "--read-data")


def test_prune_and_copy_refuse_and_change_nothing(cycles: Cycles) -> None:
    def files(repo: Path) -> list[Path]:
        return sorted(p for p in repo.rglob("*") if p.is_file() and "locks" not in p.parts)

    before = files(cycles.cli.repo)
    proc = cycles.cli("prune", check=False)
    assert proc.returncode == 4
    assert_clean(proc.stderr)
    line = _lines(proc.stderr)[-1]
    assert line.startswith("backupfs: refusing to prune, nothing was deleted: ") and FORGED in line, line
    assert files(cycles.cli.repo) == before

    dst = Cli(cycles.base / "copy")
    dst.env["BACKUPFS_FROM_PASSWORD"] = PASSWORD
    proc = dst("copy", "--from-repo", cycles.cli.repo, check=False)
    assert proc.returncode == 4
    assert_clean(proc.stderr)
    (line,) = _lines(proc.stderr)
    assert line.startswith("backupfs: ") and FORGED in line, line
    assert dst("snapshots", "--json").stdout.strip() == b"[]"  # nothing half-copied is shown


@pytest.mark.fuse
@pytest.mark.skipif(not CAN_MOUNT, reason=SKIP_REASON)
def test_the_mount_answers_eio_for_each_forged_listing(
    cycles: Cycles,
    mount: Callable[..., Mount],  # noqa: F811
) -> None:
    m = mount(cycles.cli)
    snap = m.path / "ids" / cycles.sid[:8]
    assert sorted(os.listdir(snap)) == ["good.txt", "pair", "self"]
    assert (snap / "good.txt").read_bytes() == b"good\n"
    assert os.listdir(snap / "pair") == ["up"]
    for _ in range(2):  # and logged once
        for folder in FORGED_FOLDERS:
            with pytest.raises(OSError) as exc:
                os.listdir(snap / folder.lstrip("/"))
            assert exc.value.errno == errno.EIO
        with pytest.raises(OSError) as exc:
            os.listdir(m.path / "ids" / cycles.root_sid[:8])
        assert exc.value.errno == errno.EIO
    log = m.stderr()
    assert_clean(log)
    for folder in [*FORGED_FOLDERS, "/"]:
        assert sum(_about(line, cycles, folder) for line in log.splitlines()) == 1, (folder, log)
