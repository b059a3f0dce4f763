"""The append-only promise (issue 10): a client holding the password, through a real `backupfs
serve --append-only`, uploads garbage packs and an index that supersedes every real index file
and claims every blob lives in the garbage. Nothing is deleted or overwritten, so the server
allows all of it. Afterwards readers still restore everything, `check` names the attack as an
error, and the administrator's routine `forget --keep-last 5 --prune` on the server loses nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile import assert_clean, supersede_with_garbage
from mounting import CAN_MOUNT, SKIP_REASON, Cli, Mount
from mounting import PASSWORD as MOUNT_PASSWORD
from support.cli import CLI, PASSWORD
from support.rest_server import RestServer
from support.richtree import make_rich_tree, rsync_diff
from test_mount import mount  # noqa: F401 - the fixture, shared with the other mount tests

from backupfs.backends.local import LocalBackend
from backupfs.backends.rest import RestBackend
from backupfs.repository.repo import Repository


def _sources(tmp_path: Path) -> list[Path]:
    """Three states of a rich folder (hardlinks, ACLs, xattrs, sparse files...), each its own copy."""
    first = tmp_path / "s1"
    make_rich_tree(first)
    out = [first]
    for i in (2, 3):
        nxt = tmp_path / f"s{i}"
        subprocess.run(["rsync", "-aHAX", "--numeric-ids", f"{out[-1]}/", f"{nxt}/"], check=True)
        (nxt / f"new-{i}.bin").write_bytes(os.urandom(300_000 * i))
        out.append(nxt)
    return out


def _restore_all(cli: CLI, sources: dict[str, Path], target: Path) -> None:
    for sid, src in sources.items():
        dst = target / sid[:8]
        cli("restore", sid, "--target", dst)
        assert rsync_diff(src, dst / str(src).lstrip("/")) == "", f"snapshot {sid[:8]} differs"


@pytest.mark.parametrize(("how", "trees"), [("random", False), ("forged", True)], ids=["random-data", "forged-all"])
def test_superseding_garbage_through_append_only_loses_nothing(
    tmp_path: Path, cli_env: dict[str, str], how: str, trees: bool
) -> None:
    srcs = _sources(tmp_path)
    with RestServer(tmp_path / "srv", "--append-only") as srv:
        client = CLI(srv.url("repo"), cli_env)  # type: ignore[arg-type]
        client("init")
        sources = {}
        for src in srcs:
            out = client("backup", src, "--json").stdout.splitlines()[-1]
            sources[json.loads(out)["snapshot_id"]] = src
        packs_before = {p.name for p in (tmp_path / "srv" / "repo" / "data").rglob("*") if p.is_file()}

        attacker = Repository.open(RestBackend(srv.url("repo")), PASSWORD.encode())
        try:
            garbage = supersede_with_garbage(attacker, how, trees)
        finally:
            attacker.close()

        # Readers see through it: every blob has a good copy in a pack no live index lists.
        listed = json.loads(client("snapshots", "--json").stdout)
        assert {s["id"] for s in listed} == set(sources)
        proc = client("restore", "latest", "--target", tmp_path / "before", check=False)
        assert proc.returncode == 0, proc.stderr.decode()
        assert rsync_diff(srcs[-1], tmp_path / "before" / str(srcs[-1]).lstrip("/")) == ""
        # check calls it what it is: an error, with the command that repairs it
        proc = client("check", check=False)
        assert proc.returncode == 4
        assert_clean(proc.stderr)
        err = proc.stderr.decode()
        assert "needed by snapshots" in err and "listed by no index" in err and "backupfs repair index" in err, err

    # The administrator's routine run on the server, which forgets nothing here.
    admin = CLI(tmp_path / "srv" / "repo", cli_env)
    proc = admin("forget", "--keep-last", "5", "--prune", check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert_clean(proc.stderr)
    packs_after = {p.name for p in (tmp_path / "srv" / "repo" / "data").rglob("*") if p.is_file()}
    assert packs_before <= packs_after, "prune deleted real packs"
    assert not set(garbage) & packs_after, "the garbage packs are in use by nothing and should be gone"
    shutil.rmtree(tmp_path / "before")
    _restore_all(admin, sources, tmp_path / "after")
    admin("check", "--read-data")  # and the repository is sound again


def test_index_listing_real_packs_with_made_up_blobs(tmp_path: Path) -> None:
    """The forged index also lists every real data pack, each holding one made-up blob: prune
    must not take them for empty. It reads their headers, refuses, and names `repair index`;
    after it, prune drops only the garbage and every file restores."""
    cli = Cli(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}").write_bytes(os.urandom(400_000))
    cli("backup", src)
    forger = Repository.open(LocalBackend(str(cli.repo)), MOUNT_PASSWORD.encode())
    try:
        garbage = supersede_with_garbage(forger, "random", trees=False, relist_real_packs=True)
    finally:
        forger.close()
    packs = {p.name for p in (cli.repo / "data").rglob("*") if p.is_file()}
    proc = cli("prune", check=False)
    assert proc.returncode == 4
    assert_clean(proc.stderr)
    err = proc.stderr.decode()
    assert "refusing to prune" in err and "backupfs repair index" in err, err
    assert {p.name for p in (cli.repo / "data").rglob("*") if p.is_file()} == packs
    cli("repair", "index")
    cli("prune")
    left = {p.name for p in (cli.repo / "data").rglob("*") if p.is_file()}
    assert left == packs - set(garbage)
    cli("check", "--read-data")
    cli("restore", "latest", "--target", tmp_path / "t")
    assert rsync_diff(src, tmp_path / "t" / str(src).lstrip("/")) == ""


@pytest.mark.fuse
@pytest.mark.skipif(not CAN_MOUNT, reason=SKIP_REASON)
def test_mount_reads_through_garbage_copies_and_a_damaged_index(
    tmp_path: Path,
    mount: Callable[..., Mount],  # noqa: F811
) -> None:
    """The mount after the attack, and a later backup whose index file is then damaged: every
    file reads back right (other copies, packs found by their own headers), and the damaged
    index file is logged once."""
    cli = Cli(tmp_path)
    src = tmp_path / "src"
    make_rich_tree(src)
    cli("backup", src)
    forger = Repository.open(LocalBackend(str(cli.repo)), MOUNT_PASSWORD.encode())
    try:
        supersede_with_garbage(forger, "forged", trees=True)
    finally:
        forger.close()
    later = tmp_path / "later"
    later.mkdir()
    (later / "new.bin").write_bytes(os.urandom(200_000))
    before = set((cli.repo / "index").iterdir())
    cli("backup", later)
    (written,) = set((cli.repo / "index").iterdir()) - before
    written.chmod(0o600)
    written.write_bytes(b"")
    m = mount(cli)
    snaps = sorted(os.listdir(m.path / "snapshots"))
    assert len(snaps) == 2
    assert rsync_diff(src, m.path / "snapshots" / snaps[0] / str(src).lstrip("/")) == ""
    assert rsync_diff(later, m.path / "snapshots" / snaps[1] / str(later).lstrip("/")) == ""
    log = m.stderr()
    assert log.count(f"index file {written.name[:8]} is damaged") == 1, log
