"""`backupfs verify`: restore drills through the real command line (format.md 14, docs/verify.md).

Each kind of damage is made for real: a flipped byte in a pack file on disk, a tree forged with the
repository's key, a bug put into the restore code of the process that runs the drill. The drill
must catch each one and name the snapshot, the file and what differed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest
from fastrepo import FAST_KDF
from oldformat import strip_file_hashes
from support.cli import CLI, PASSWORD
from support.rest_server import RestServer

from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.cli.main import main
from backupfs.format.verifyrecord import RESTORE, VerifyRecord
from backupfs.ops import restore as restore_mod
from backupfs.ops.treeview import lookup
from backupfs.repository.repo import Repository

MiB = 1 << 20
EXIT_INTEGRITY, EXIT_STALE, EXIT_LOCKED = 4, 5, 11


def rand(n: int, seed: int) -> bytes:
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=n)


def open_repo(repo: Path) -> Repository:
    r = Repository.open(LocalBackend(str(repo)), PASSWORD.encode())
    r.load_index()
    return r


def init(repo: Path, **kw: object) -> None:
    Repository.init(LocalBackend(str(repo)), PASSWORD.encode(), kdf=FAST_KDF, **kw).close()  # type: ignore[arg-type]


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    init(tmp_path / "repo")
    return CLI(tmp_path / "repo", cli_env)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """Files of every size class: batched small ones, a streamed one of several chunks."""
    s = tmp_path / "src"
    (s / "docs").mkdir(parents=True)
    (s / "docs" / "note.txt").write_bytes(b"a small note\n" * 50)
    (s / "docs" / "small.bin").write_bytes(rand(30_000, 1))
    (s / "big.bin").write_bytes(rand(6 * MiB, 2))  # several chunks (512 KiB minimum, ~1 MiB average)
    os.chmod(s / "docs" / "note.txt", 0o640)
    return s


def drill(cli: CLI, *args: str | os.PathLike[str], check: bool = False) -> tuple[int, dict[str, object], str]:
    proc = cli("verify", "--json", *args, check=check)
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err and "internal error" not in err, err
    if proc.returncode != 0:  # --json: a failure's error document is the last line
        assert json.loads(proc.stdout.splitlines()[-1])["code"] == proc.returncode
    return proc.returncode, document(proc.stdout), err


def document(text: str | bytes, message_type: str = "summary") -> dict[str, object]:
    """The one document of `message_type` among --json's lines: progress (`status`) lines may
    come before a summary, an error document after it."""
    [found] = [d for d in map(json.loads, text.splitlines()) if d["message_type"] == message_type]
    return found  # type: ignore[no-any-return]


def records(repo: Path) -> list[VerifyRecord]:
    r = open_repo(repo)
    try:
        return [rec for _name, rec in r.list_verify_records(on_damaged=lambda n, e: pytest.fail(f"{n}: {e}"))]
    finally:
        r.close()


def chunk_places(repo: Path, path: Path | str, snapshot: str = "latest") -> list[tuple[Path, int, int]]:
    """(pack file, offset, length) of each chunk of the file `path` in a snapshot."""
    r = open_repo(repo)
    try:
        _sid, snap = r.find_snapshot(snapshot)
        node = lookup(r, snap.tree, str(path))
        out = []
        for _off, bid in node.content or ():
            loc = r.index.lookup(bid)
            assert loc is not None
            pack = loc.pack_id.hex()
            out.append((repo / "data" / pack[:2] / pack, loc.offset, loc.length))
        return out
    finally:
        r.close()


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.chmod(0o600)
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- a drill that passes


def test_a_clean_drill_passes_is_recorded_and_shows_in_snapshots_and_status(cli: CLI, src: Path) -> None:
    cli("backup", src)
    proc = cli("verify", "--status", check=False)
    assert proc.returncode == EXIT_STALE and b"no restore drill is recorded" in proc.stderr

    code, out, err = drill(cli, "--max-bytes", "100M")
    assert code == 0, err
    assert out["ok"] and out["files_verified"] == 3 and out["bytes_verified"] == 6 * MiB + 30_000 + 650
    assert out["files_checked_by_chunk"] == 0 and out["failures"] == []
    [record] = records(cli.repo)
    assert record.ok and record.files == 3 and record.method == RESTORE and record.seed == out["seed"]
    assert record.packs and len(record.snapshots) == 1
    assert not list((cli.repo.parent / "cache" / "backupfs").glob("*/backupfs-verify-*"))  # scratch removed
    assert not list((cli.repo.parent / "cache" / "backupfs").glob("backupfs-verify-*"))
    human = cli("verify", "--files", "1").stderr.decode()
    assert f"(seed {records(cli.repo)[-1].seed})" in human  # printed, so that a drill can be repeated

    [snap] = json.loads(cli("snapshots", "--json").stdout)
    assert snap["last_verified"]["ok"] is True
    assert "Verified" in cli("snapshots").stdout.decode()
    status = cli("verify", "--status", "--max-age", "1d", "--json")
    assert document(status.stdout, "verify_status")["coverage_7d"] == 1.0


def test_status_exit_codes_say_failed_or_too_old(cli: CLI, src: Path) -> None:
    cli("backup", src)
    r = open_repo(cli.repo)
    try:  # a drill that ended 8 days ago
        week_ago = time.time_ns() - 8 * 86400 * 10**9
        r.save_verify_record(VerifyRecord(week_ago - 10**9, week_ago, "h", "u", "t", RESTORE, 1, True, 1, 1, 0))
    finally:
        r.close()
    assert cli("verify", "--status", "--max-age", "9d").returncode == 0
    proc = cli("verify", "--status", "--max-age", "7d", check=False)
    assert proc.returncode == EXIT_STALE and b"older than 7d" in proc.stderr
    proc = cli("verify", "--status", "--max-age", "7 days", check=False)
    assert proc.returncode == 2 and b"invalid duration" in proc.stderr

    flip(*_middle(chunk_places(cli.repo, src / "docs" / "small.bin")[0]))
    code, _out, _err = drill(cli, "--max-bytes", "100M")
    assert code == EXIT_INTEGRITY
    proc = cli("verify", "--status", check=False)
    assert proc.returncode == EXIT_INTEGRITY and b"found 1 failures" in proc.stderr
    assert b"small.bin" in proc.stdout  # the failure, as recorded
    [snap] = json.loads(cli("snapshots", "--json").stdout)
    assert snap["last_verified"]["ok"] is False


def test_a_damaged_record_is_skipped_with_a_warning(cli: CLI, src: Path) -> None:
    """Records schedule and report: one that cannot be read costs itself, never a drill."""
    cli("backup", src)
    assert drill(cli, "--files", "1")[0] == 0
    garbage = b"not a verify record"
    name = blake3.blake3(garbage).hexdigest()
    (cli.repo / "verify" / name).write_bytes(garbage)  # named by its content, as every repository file
    proc = cli("verify", "--status")
    assert f"warning: verify record {name[:8]} skipped: verify/{name}: " in proc.stderr.decode()
    assert b"1 drills recorded" in proc.stdout
    code, _out, err = drill(cli, "--files", "1")
    assert code == 0 and f"verify record {name[:8]} skipped" in err
    assert "warning: verify record" in cli("snapshots").stderr.decode()


def _middle(place: tuple[Path, int, int]) -> tuple[Path, int]:
    pack, offset, length = place
    return pack, offset + length // 2


# --------------------------------------------------------------------------- what a drill catches


def test_a_damaged_chunk_is_caught_and_named(cli: CLI, src: Path) -> None:
    cli("backup", src)
    sid = json.loads(cli("snapshots", "--json").stdout)[0]["id"]
    flip(*_middle(chunk_places(cli.repo, src / "big.bin")[1]))
    code, out, _err = drill(cli, "--max-bytes", "100M")
    assert code == EXIT_INTEGRITY
    [failure] = out["failures"]  # type: ignore[misc]
    assert failure["snapshot_id"] == sid and failure["path"] == f"{src}/big.bin"
    assert "not restored" in failure["what"] and "authentication failed" in failure["what"]
    assert out["files_verified"] == 2
    text = cli("verify", "--max-bytes", "100M", check=False).stderr.decode()
    assert f"error: snapshot {sid[:8]}: {src}/big.bin: not restored" in text


@pytest.fixture
def in_process(cli: CLI, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> Iterator[
    Callable[..., tuple[int, str, str]]
]:  # fmt: skip
    """The real CLI's main() in this process, so a bug put into its restore code applies."""
    for key, value in cli.env.items():
        monkeypatch.setenv(key, value)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["-r", str(cli.repo), *args])
        out, err = capfd.readouterr()
        return code, out, err

    yield run


def _misaligned(self: restore_mod.Restorer, content: list[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """A plausible restore bug: the windowed fetch hands each offset the chunk of the next one."""
    chunks = list(real_blobs(self, content))
    yield from ((off, chunks[(i + 1) % len(chunks)][1]) for i, (off, _data) in enumerate(chunks))


real_blobs = restore_mod.Restorer._blobs


@pytest.mark.parametrize("old_snapshot", [False, True], ids=["with-fh", "without-fh"])
def test_a_restore_bug_is_caught_and_named(
    cli: CLI, src: Path, monkeypatch: pytest.MonkeyPatch, in_process: Callable[..., tuple[int, str, str]],
    old_snapshot: bool,
) -> None:  # fmt: skip
    """The restore reports nothing wrong (the bug is silent); the drill reads back what it wrote.
    A snapshot without `fh` (older backupfs) is checked chunk by chunk, which sees it too."""
    cli("backup", src)
    if old_snapshot:
        strip_file_hashes(cli.repo)
    monkeypatch.setattr(restore_mod.Restorer, "_blobs", _misaligned)
    code, _out, err = in_process("restore", "latest", "--target", str(src.parent / "restored"))
    assert code == 0, err  # the restore itself sees nothing
    code, out, err = in_process("verify", "--max-bytes", "100M", "--json")
    assert code == EXIT_INTEGRITY, err
    summary = document(out)
    [failure] = summary["failures"]
    assert failure["path"] == f"{src}/big.bin"
    expect = "the chunk at offset 0" if old_snapshot else "(whole-file hash)"
    assert "its content differs from the file backed up" in failure["what"] and expect in failure["what"]
    assert summary["files_checked_by_chunk"] == (3 if old_snapshot else 0)
    monkeypatch.undo()
    assert drill(cli, "--max-bytes", "100M")[0] == 0


def test_metadata_the_restore_failed_to_set_is_named(
    cli: CLI, src: Path, monkeypatch: pytest.MonkeyPatch, in_process: Callable[..., tuple[int, str, str]]
) -> None:
    cli("backup", src)
    monkeypatch.setattr(restore_mod.fsmeta, "apply_metadata_fd", lambda fd, node, owner: [])
    code, out, err = in_process("verify", "--files", "1", "--json", "--seed", "1")
    assert code == EXIT_INTEGRITY, err
    [failure] = document(out)["failures"]
    assert "its mode is 600, the backup says" in failure["what"] and "its mtime is" in failure["what"]


def test_old_and_copied_snapshots_are_verified_chunk_by_chunk(
    cli: CLI, src: Path, make_cli: Callable[[Path], CLI], tmp_path: Path
) -> None:
    cli("backup", src)
    dst = make_cli(tmp_path / "dst")
    init(tmp_path / "dst")
    dst("copy", "--from-repo", cli.repo, env={"BACKUPFS_FROM_PASSWORD": PASSWORD})
    code, out, err = drill(dst, "--max-bytes", "100M")
    assert code == 0, err  # fh is keyed per repository: copy leaves it out rather than carry a wrong one
    assert out["files_verified"] == out["files_checked_by_chunk"] == 3
    strip_file_hashes(cli.repo)
    code, out, err = drill(cli, "--max-bytes", "100M")
    assert code == 0 and out["files_checked_by_chunk"] == 3, err


def test_compare_source_catches_a_source_corrupted_behind_its_mtime(cli: CLI, src: Path) -> None:
    cli("backup", src)
    (src / "docs" / "note.txt").write_bytes(b"changed, and its mtime too\n")
    victim = src / "docs" / "small.bin"
    st = victim.stat()
    with open(victim, "r+b") as f:  # bit rot on the source disk: same size, same mtime
        f.seek(1000)
        f.write(b"\0")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, out, err = drill(cli, "--max-bytes", "100M", "--compare-source")
    assert code == EXIT_INTEGRITY, err
    [failure] = out["failures"]  # type: ignore[misc]
    assert failure["path"] == str(victim) and "live source differs" in failure["what"]
    assert out["sources_compared"] == 2 and out["sources_changed"] == 1


# --------------------------------------------------------------------------- --exec, rotation, locks


def _torn_database(path: Path) -> None:
    """A database as a copy taken during a commit sees it: the first half of the file already
    rewritten, the rest not yet (SQLite writes a commit's pages in place)."""
    rng = random.Random(5)
    con = sqlite3.connect(path)
    con.execute("pragma journal_mode=delete")
    con.execute("create table t(id integer primary key, v text)")
    con.execute("create index tv on t(v)")
    con.executemany("insert into t(v) values (?)", [(rng.randbytes(40).hex(),) for _ in range(20_000)])
    con.commit()
    before = path.read_bytes()
    con.executemany("update t set v=? where id=?", [(rng.randbytes(40).hex(), i) for i in range(1, 20_000, 3)])
    con.commit()
    con.close()
    after = path.read_bytes()
    path.write_bytes(after[: len(before) // 2] + before[len(before) // 2 :])


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs the sqlite3 command (tools/install-deps.sh --test)")
def test_exec_with_sqlite3_catches_a_database_backed_up_mid_write(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "db"
    src.mkdir()
    good = sqlite3.connect(src / "good.db")
    good.execute("create table t(v)")
    good.executemany("insert into t values (?)", [(i,) for i in range(1000)])
    good.commit()
    good.close()
    _torn_database(src / "torn.db")
    cli("backup", src)
    check = """test "$(sqlite3 {} 'pragma integrity_check' 2>&1)" = ok"""
    code, out, err = drill(cli, "--max-bytes", "100M", "--exec", check)
    assert code == EXIT_INTEGRITY, err
    [failure] = out["failures"]  # type: ignore[misc]
    assert failure["path"] == f"{src}/torn.db" and "--exec exited with 1" in failure["what"]
    assert out["commands_run"] == 2 and out["files_verified"] == 1  # its bytes are as backed up
    proc = cli("verify", "--exec", "true", check=False)
    assert proc.returncode == 2 and b"needs {}" in proc.stderr


def test_rotation_reads_every_pack_in_as_many_drills_as_there_are_packs(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """Drills of one file each that start with packs no drill has read: N packs take N drills. A
    size-weighted draw alone would cover 6 packs in 6 drills once in 65 (6!/6^6)."""
    init(tmp_path / "repo")
    cli = CLI(tmp_path / "repo", cli_env)
    for i in range(6):  # a backup each: a pack each
        folder = tmp_path / f"folder{i}"
        folder.mkdir()
        (folder / "file").write_bytes(rand(100_000, 100 + i))
        cli("backup", folder)
    r = open_repo(cli.repo)
    trees = _tree_packs(r)
    packs = {bytes.fromhex(n) for n, _size in r.backend.list(FileType.DATA)} - trees
    r.close()
    assert len(packs) == 6
    seen: set[bytes] = set()
    for run in range(len(packs)):
        code, _out, err = drill(cli, "--all", "--files", "1", "--seed", str(run))
        assert code == 0, err
        [new] = set(records(cli.repo)[-1].packs) - trees  # and the tree packs of the listings it read
        assert new not in seen, f"drill {run} read a pack that was read before"
        seen.add(new)
    assert seen == packs
    assert document(cli("verify", "--status", "--json").stdout, "verify_status")["coverage_7d"] == 1.0


def _tree_packs(r: Repository) -> set[bytes]:
    return {loc.pack_id for _bid, loc in r.index.items() if loc.type == 1}


def test_the_seed_of_a_drill_draws_its_sample_again(cli: CLI, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(30):
        (data / f"f{i:02d}").write_bytes(rand(20_000 + 100 * i, 200 + i))
    cli("backup", data)
    _code, first, _err = drill(cli, "--files", "3")
    drill(cli, "--files", "3")  # another drill in between changes what is stale
    drill(cli, "--files", "3", "--seed", str(first["seed"]))
    a, _b, c = records(cli.repo)
    assert a.seed == c.seed and a.packs == c.packs and a.nbytes == c.nbytes


def test_a_drill_runs_beside_a_backup_but_not_beside_a_prune(cli: CLI, src: Path) -> None:
    cli("backup", src)
    r = open_repo(cli.repo)
    try:
        r.lock(exclusive=False)  # a backup running
        assert drill(cli, "--files", "1")[0] == 0
    finally:
        r.close()
    r = open_repo(cli.repo)
    try:
        r.lock(exclusive=True)  # a prune running
        proc = cli("verify", "--files", "1", check=False)
        assert proc.returncode == EXIT_LOCKED, proc.stderr
    finally:
        r.close()


def test_bad_arguments_are_one_line_usage_errors(cli: CLI, src: Path) -> None:
    cli("backup", src)
    for args in (
        ["--sample", "0%"],
        ["--sample", "five"],
        ["--files", "0"],
        ["--max-bytes", "lots"],
        ["--max-duration", "10 minutes"],
        ["--all", "latest"],
        ["--status", "--files", "1"],
        ["--max-age", "1d"],
        ["--seed", "-1"],
    ):
        proc = cli("verify", *args, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (args, err)


def test_a_scratch_folder_that_cannot_be_made_is_a_clean_error(cli: CLI, src: Path, tmp_path: Path) -> None:
    cli("backup", src)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    proc = cli("verify", "--scratch", blocker / "sub", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err == f"backupfs: cannot make a scratch folder in {blocker / 'sub'}: Not a directory\n"
    assert not records(cli.repo)


def test_max_duration_stops_between_batches_and_says_so(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_process: Callable[..., tuple[int, str, str]]
) -> None:
    """The drill's clock is moved on by each restore (no sleeping); batches are made small."""
    from backupfs.ops import verify as verify_mod

    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"f{i}").write_bytes(rand(150_000 + i, 300 + i))
    cli("backup", data)
    monkeypatch.setattr(verify_mod, "BATCH_BYTES", 200_000)  # a batch per file
    clock = [1000.0]
    monkeypatch.setattr(verify_mod, "_clock", lambda: clock[0])
    real_run = restore_mod.Restorer.run

    def slow_run(self: restore_mod.Restorer) -> restore_mod.RestoreStats:
        clock[0] += 40  # each batch "takes" 40 s
        return real_run(self)

    monkeypatch.setattr(restore_mod.Restorer, "run", slow_run)
    code, out, err = in_process("verify", "--max-bytes", "1G", "--max-duration", "1m", "--json")
    assert code == 0, err
    summary = document(out)
    assert summary["stopped_at_max_duration"] and summary["files_verified"] == 2 and summary["files_not_reached"] == 2
    [record] = records(cli.repo)
    assert record.ok and record.files == 2


def test_a_drill_of_an_append_only_server_records_its_result_there(
    src: Path, make_cli: Callable[[Path | str], CLI], tmp_path: Path
) -> None:
    """A drill only adds a file; its record is kept in the local cache like the snapshot files."""
    with RestServer(tmp_path / "srv", "--append-only") as srv:
        remote = make_cli(srv.url("repo"))  # type: ignore[arg-type]
        remote("init")
        remote("backup", src)
        code, out, err = drill(remote, "--max-bytes", "100M")
        assert code == 0 and out["record_id"], err
        assert (tmp_path / "srv" / "repo" / "verify" / str(out["record_id"])).is_file()
        assert document(remote("verify", "--status", "--json").stdout, "verify_status")["ok"]
        cached = list((tmp_path / "cache" / "backupfs").glob(f"*/verify/{out['record_id']}"))
        assert len(cached) == 1  # read once, then from the cache
        [snap] = json.loads(remote("snapshots", "--json").stdout)
        assert snap["last_verified"]["ok"] is True
