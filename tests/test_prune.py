"""prune: space comes back, kept snapshots stay intact, and nothing is deleted that cannot be proven unused.

Most tests drive the real CLI on a local repository; a few use the Repository API on the memory
backend to reach states a CLI cannot make on demand (duplicate blobs from concurrent backups,
index files split in many parts, a crash between the parts).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli import CLI, PASSWORD

from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.backends.memory import MemoryBackend
from backupfs.crypto import file_id
from backupfs.errors import BackendError, UsageError
from backupfs.format.index import IndexFile, encode_index
from backupfs.format.pack import DATA, TREE, PackEntry
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, FILE, Node
from backupfs.ops.check import Checker
from backupfs.ops.restore import Restorer
from backupfs.prune.execute import PHASES, execute
from backupfs.prune.options import MaxUnused, PruneOptions, parse_max_unused, parse_repack_threshold, parse_size
from backupfs.prune.plan import PruneRefused, plan_prune
from backupfs.prune.table import REC_SIZE, BlobTable, entries_of
from backupfs.repository.repo import Repository

PW = PASSWORD.encode()
CHEAP_KDF = (1, 8192)  # the tests open repositories hundreds of times

# ---------------------------------------------------------------- helpers (also used by the other prune tests)


def init_repo(path: Path) -> None:
    """A local repository with 1 MiB packs and a cheap key, so the CLI opens it fast."""
    Repository.init(LocalBackend(str(path)), PW, pack_size=1 << 20, kdf=CHEAP_KDF).close()


@pytest.fixture
def pcli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    init_repo(tmp_path / "repo")
    return CLI(tmp_path / "repo", cli_env)


@contextlib.contextmanager
def opened(path: Path, load_index: bool = True) -> Iterator[Repository]:
    repo = Repository.open(LocalBackend(str(path)), PW)
    try:
        if load_index:
            repo.load_index()
        yield repo
    finally:
        repo.close()


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def repo_state(repo: Path) -> dict[str, str]:
    """Every repository file (but locks and temporaries) with its hash: equal states mean nothing changed."""
    return {
        k: v for k, v in tree_hashes(repo).items() if not k.startswith("locks/") and not Path(k).name.startswith(".")
    }


def repo_size(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())


def write_random(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rng.randbytes(size))


def backup(cli: CLI, src: Path, *extra: str) -> str:
    out = cli("backup", src, "--json", *extra).stdout.splitlines()[-1]
    sid: str = json.loads(out)["snapshot_id"]
    return sid


def snapshot_ids(cli: CLI) -> list[str]:
    return [s["id"] for s in json.loads(cli("snapshots", "--json").stdout)]


def verify_restore(cli: CLI, sid: str, src: Path, expected: dict[str, str], target: Path) -> None:
    """Restores one snapshot and compares every file with the source's sha256 at backup time."""
    cli("restore", sid, "--target", target, "-q")
    got = tree_hashes(target / str(src).lstrip("/"))
    assert got == expected, f"snapshot {sid[:8]} does not restore identically"


def verify_in_process(repo_path: Path, kept: dict[str, tuple[Path, dict[str, str]]], scratch: Path) -> None:
    """`check --read-data` and a byte-identical restore of every kept snapshot, without the CLI's start-up."""
    with opened(repo_path, load_index=False) as repo:
        result = Checker(repo).run(read_data=True)
        assert result.ok, result.errors
    with opened(repo_path) as repo:
        for sid, (src, expected) in kept.items():
            target = scratch / f"r-{sid[:8]}-{time.monotonic_ns()}"
            stats = Restorer(repo, repo.load_snapshot(sid).tree, str(target)).run()
            assert not stats.errors, stats.errors
            assert tree_hashes(target / str(src).lstrip("/")) == expected, f"snapshot {sid[:8]} differs"


def add_unindexed_pack(repo: Path, rng: random.Random) -> str:
    """A pack file no index names, as a killed backup leaves one behind."""
    data = rng.randbytes(50_000)
    name = file_id(data)
    (repo / "data" / name[:2]).mkdir(exist_ok=True)
    (repo / "data" / name[:2] / name).write_bytes(data)
    return name


class Scenario:
    """Four snapshots of an evolving folder, built so that prune has every kind of work:

    S1: 40 files of 30 KB, `k*` and `d*` interleaved (so every data pack is half `d*`);
    S2: `d*` gone, one 2.5 MB file `big` (packs only S2 uses);  S3: `big` gone, a new file;
    S4: one more file. Forgetting S1 and S2 leaves packs with nothing in use (big), packs half in
    use (d*), and tree packs with old trees; plus one unindexed pack from a "killed backup".
    Built once per session; each test works on a copy (`clone`).
    """

    def __init__(self, cli: CLI, root: Path, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.cli = cli
        self.src = src = root / "src"
        for i in range(40):
            write_random(src / "files" / f"f{i:03d}-{'k' if i % 2 == 0 else 'd'}", 30_000, rng)
        self.s1 = backup(cli, src)
        for p in (src / "files").glob("*-d"):
            p.unlink()
        write_random(src / "big", 2_500_000, rng)
        self.s2 = backup(cli, src)
        (src / "big").unlink()
        write_random(src / "new", 200_000, rng)
        self.s3 = backup(cli, src)
        self.expect3 = tree_hashes(src)
        write_random(src / "files" / "later", 100_000, rng)
        self.s4 = backup(cli, src)
        self.expect4 = tree_hashes(src)
        self.garbage = add_unindexed_pack(cli.repo, rng)

    def clone(self, cli: CLI) -> Scenario:
        """The same scenario in `cli.repo` (a copy of this repository)."""
        shutil.copytree(self.cli.repo, cli.repo)
        other = copy.copy(self)
        other.cli = cli
        return other

    @property
    def kept(self) -> dict[str, tuple[Path, dict[str, str]]]:
        return {self.s3: (self.src, self.expect3), self.s4: (self.src, self.expect4)}

    def forget_old(self) -> None:
        self.cli("forget", self.s1, self.s2)


@pytest.fixture(scope="session")
def scenario_base(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    root = tmp_path_factory.mktemp("prune-scenario")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPFS_")}
    env |= {"BACKUPFS_PASSWORD": PASSWORD, "HOME": str(root / "home"), "XDG_CACHE_HOME": str(root / "cache")}
    init_repo(root / "repo")
    return Scenario(CLI(root / "repo", env), root)


@pytest.fixture
def scenario(scenario_base: Scenario, tmp_path: Path, cli_env: dict[str, str]) -> Scenario:
    return scenario_base.clone(CLI(tmp_path / "repo", cli_env))


def one_error_line(stderr: str) -> bool:
    """The error is one line, the last; progress lines may come before it."""
    lines = stderr.splitlines()
    return bool(lines) and lines[-1].startswith("backupfs: ") and sum(ln.startswith("backupfs:") for ln in lines) == 1


def prune_json(cli: CLI, *args: str, **kw: Any) -> dict[str, Any]:
    proc = cli.run("prune", "--json", *args, **kw)
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


# ---------------------------------------------------------------- end to end through the CLI


def test_prune_reclaims_space_and_keeps_snapshots_intact(scenario: Scenario, tmp_path: Path) -> None:
    sc = scenario
    pcli = sc.cli
    before = repo_size(pcli.repo)
    sc.forget_old()
    assert set(snapshot_ids(pcli)) == {sc.s3, sc.s4}
    out = prune_json(pcli)
    assert out["dry_run"] is False
    assert out["delete_packs"] >= 2
    assert out["repack_packs"] >= 1
    assert out["unindexed_packs"] == 1
    after = repo_size(pcli.repo)
    # big (2.5 MB) and half of the d* files (0.6 MB) are gone.
    assert before - after > 2_800_000, (before, after)
    assert out["freed_bytes"] == before - after
    assert out["unused_after"] <= 0.05 * (out["used_bytes"] + out["unused_after"])
    pcli("check", "--read-data")
    verify_restore(pcli, sc.s3, sc.src, sc.expect3, tmp_path / "r3")
    verify_restore(pcli, sc.s4, sc.src, sc.expect4, tmp_path / "r4")
    # a second run finds nothing left to do
    again = pcli("prune").stdout.decode()
    assert "nothing to do" in again
    assert len(list((pcli.repo / "index").iterdir())) == 1


def test_dry_run_changes_nothing_and_prints_the_plan(scenario: Scenario, tmp_path: Path) -> None:
    sc = scenario
    pcli = sc.cli
    sc.forget_old()
    state = repo_state(pcli.repo)
    proc = pcli("prune", "--dry-run")
    text = proc.stdout.decode()
    assert repo_state(pcli.repo) == state
    lines = text.splitlines()
    assert any(line.startswith("delete ") and "0.0% used" in line for line in lines), text
    assert any(line.startswith("repack ") and "data" in line for line in lines), text
    assert any(sc.garbage in line and "in no index" in line for line in lines), text
    assert "would free" in text and "dry run" in text
    js = prune_json(pcli, "--dry-run")
    assert js["dry_run"] is True and js["freed_bytes"] > 2_800_000
    assert sc.garbage in js["unindexed"]
    assert repo_state(pcli.repo) == state


def test_repack_respects_max_unused_and_max_repack_size(scenario: Scenario, tmp_path: Path) -> None:
    sc = scenario
    pcli = sc.cli
    sc.forget_old()

    def data_repacks(js: dict[str, Any]) -> int:
        return sum(1 for p in js["repack"] if p["type"] == "data")

    full = prune_json(pcli, "--dry-run")
    assert data_repacks(full) >= 2
    # Tolerating any amount repacks no data pack, whatever the threshold (tree packs are cheap: always);
    # so does tolerating more than there is, with the per-pack threshold off (restic's rule alone).
    for extra in (["--max-unused", "unlimited"], ["--max-unused", "10M", "--repack-threshold", "off"]):
        js = prune_json(pcli, "--dry-run", *extra)
        assert data_repacks(js) == 0 and js["delete_packs"] == full["delete_packs"], extra
    # Within 10M, but the half-empty d* packs are over the 5% threshold: repacked for that reason.
    js = prune_json(pcli, "--dry-run", "--max-unused", "10M")
    assert data_repacks(js) == data_repacks(full) and js["repack_threshold"] == "5%"
    assert {p["reason"] for p in js["repack"] if p["type"] == "data"} == {"threshold"}
    text = pcli("prune", "--dry-run", "--max-unused", "10M").stdout.decode()
    assert any(ln.startswith("repack ") and ln.endswith("(threshold)") for ln in text.splitlines()), text
    assert f"{data_repacks(full)} at 5% unused or more" in text, text
    capped = prune_json(pcli, "--dry-run", "--max-repack-size", "1")
    assert capped["repack_packs"] == 0 and capped["delete_packs"] == full["delete_packs"]
    one = prune_json(pcli, "--dry-run", "--max-repack-size", "1100k")
    assert 1 <= one["repack_packs"] < full["repack_packs"]
    assert one["repack_bytes"] <= 1100 * 1024

    out = prune_json(pcli, "--max-unused", "unlimited")
    assert out["delete_packs"] >= 2
    after = prune_json(pcli, "--dry-run")
    assert after["delete_packs"] == 0 and after["unindexed_packs"] == 0
    assert after["unused_bytes"] > 500_000  # d* still there, half of each pack
    out = prune_json(pcli)
    assert out["repack_packs"] >= 2 and out["packs_written"] >= 1
    assert out["unused_after"] <= 0.05 * (out["used_bytes"] + out["unused_after"])
    final = prune_json(pcli, "--dry-run")
    assert final["repack_packs"] == 0 and final["unused_bytes"] == out["unused_after"]
    verify_in_process(pcli.repo, sc.kept, tmp_path)


def test_prune_of_a_fresh_or_unchanged_repository(pcli: CLI, tmp_path: Path) -> None:
    assert "nothing to do" in pcli("prune").stdout.decode()
    src = tmp_path / "src"
    write_random(src / "a", 100_000, random.Random(3))
    backup(pcli, src)
    state = repo_state(pcli.repo)
    assert "nothing to do" in pcli("prune").stdout.decode()
    assert repo_state(pcli.repo) == state


def test_forgetting_everything_empties_the_repository(pcli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_random(src / "a", 1_500_000, random.Random(4))
    sid = backup(pcli, src)
    pcli("forget", sid)
    out = prune_json(pcli)
    assert out["used_blobs"] == 0
    assert repo_size(pcli.repo) == 0
    assert len(list((pcli.repo / "index").iterdir())) == 1
    pcli("check", "--read-data")
    backup(pcli, src)  # the repository is still usable
    pcli("check", "--read-data")


def test_damaged_tree_makes_prune_refuse(scenario: Scenario, tmp_path: Path) -> None:
    sc = scenario
    pcli = sc.cli
    sc.forget_old()
    with opened(pcli.repo) as repo:
        loc = repo.index.lookup(repo.load_snapshot(sc.s4).tree)
    assert loc is not None
    pack = pcli.repo / "data" / loc.pack_id.hex()[:2] / loc.pack_id.hex()
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))
    state = repo_state(pcli.repo)
    proc = pcli("prune", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 4, err
    assert sc.s4[:8] in err and "refusing to prune" in err and "nothing was deleted" in err
    assert one_error_line(err)
    assert repo_state(pcli.repo) == state
    # A dry run refuses in the same way.
    assert pcli("prune", "--dry-run", check=False).returncode == 4
    assert repo_state(pcli.repo) == state


def test_missing_data_pack_makes_prune_refuse(scenario: Scenario, tmp_path: Path) -> None:
    sc = scenario
    pcli = sc.cli
    sc.forget_old()
    with opened(pcli.repo) as repo:
        snap = repo.load_snapshot(sc.s3)
        root = repo.load_tree(snap.tree)
    del root
    # remove the pack holding the `new` file's blob (S3 and S4 both use it)
    with opened(pcli.repo) as repo:
        nodes = _find(repo, repo.load_snapshot(sc.s3).tree, [*str(sc.src).strip("/").split("/"), "new"])
        assert nodes.content
        loc = repo.index.lookup(nodes.content[0][1])
    assert loc is not None
    (pcli.repo / "data" / loc.pack_id.hex()[:2] / loc.pack_id.hex()).unlink()
    state = repo_state(pcli.repo)
    proc = pcli("prune", check=False)
    assert proc.returncode == 4
    assert b"missing" in proc.stderr and b"nothing was deleted" in proc.stderr
    assert repo_state(pcli.repo) == state


def _find(repo: Repository, tree: bytes, parts: list[str]) -> Node:
    node = None
    for part in parts:
        node = next(n for n in repo.load_tree(tree) if n.name == part.encode())
        if node.subtree is not None:
            tree = node.subtree
    assert node is not None
    return node


def _wait_for(pred: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _slow_backup(cli: CLI, command: str) -> subprocess.Popen[bytes]:
    """A backup that keeps running (and holding its shared lock) while the command runs."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "backupfs", "-r", str(cli.repo), "backup", "-q", "--stdin-from-command"),
            *("--stdin-filename", "stream", "--", "sh", "-c", command),
        ],
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_prune_refuses_while_a_backup_holds_a_lock(scenario: Scenario, tmp_path: Path) -> None:
    sc = scenario
    pcli = sc.cli
    sc.forget_old()
    flag = tmp_path / "finish"
    proc = _slow_backup(pcli, f"while [ ! -e {flag} ]; do sleep 0.05; done; echo done")
    try:
        _wait_for(lambda: any((pcli.repo / "locks").iterdir()))
        state = repo_state(pcli.repo)
        refused = pcli("prune", check=False)
        assert refused.returncode == 11
        err = refused.stderr.decode()
        assert f"PID {proc.pid}" in err and "already locked" in err and "backupfs unlock" in err
        assert one_error_line(err)
        assert pcli("forget", "--keep-last", "1", check=False).returncode == 11
        assert repo_state(pcli.repo) == state
        # A dry run takes a shared lock and may look while the backup runs.
        assert pcli("prune", "--dry-run").returncode == 0
    finally:
        flag.touch()
        assert proc.wait(30) == 0
    prune_json(pcli)
    pcli("check", "--read-data")


def test_killed_backup_leaves_a_stale_lock_and_packs_that_prune_reclaims(pcli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_random(src / "a", 300_000, random.Random(5))
    sid = backup(pcli, src)
    before = repo_state(pcli.repo)
    proc = _slow_backup(pcli, "head -c 20000000 /dev/urandom; sleep 60")
    try:
        _wait_for(lambda: len(repo_state(pcli.repo)) > len(before))  # a pack uploaded, not indexed
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert any((pcli.repo / "locks").iterdir())
    pcli("check")  # the unindexed pack is a warning, not an error
    out = prune_json(pcli)  # the dead process's lock does not block prune
    assert out["unindexed_packs"] >= 1
    assert repo_state(pcli.repo).keys() == before.keys()
    assert b"removed 1 lock" in pcli("unlock").stderr
    assert not any((pcli.repo / "locks").iterdir())
    pcli("check", "--read-data")
    verify_restore(pcli, sid, src, tree_hashes(src), tmp_path / "r")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs, so that the test can fill it up; needs root."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path, leave: int) -> None:
    """Fills the file system holding `path` until only about `leave` bytes are free."""
    free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    with open(path / "filler", "wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * max(0, free - leave))


def test_disk_full_during_repack_stops_cleanly(small_fs: Path, cli_env: dict[str, str], tmp_path: Path) -> None:
    repo_path = small_fs / "repo"
    init_repo(repo_path)
    cli = CLI(repo_path, cli_env)
    rng = random.Random(6)
    src = tmp_path / "src"
    for i in range(60):
        write_random(src / f"f{i:03d}-{'k' if i % 2 == 0 else 'd'}", 30_000, rng)
    s1 = backup(cli, src)
    for p in src.glob("*-d"):
        p.unlink()
    s2 = backup(cli, src)
    expected = tree_hashes(src)
    cli("forget", s1)
    plan = prune_json(cli, "--dry-run")
    assert plan["repack_packs"] >= 1 and plan["repack_used_bytes"] > 300_000
    _fill(small_fs, 150_000)  # room for locks and an index file, not for a repacked pack
    state = repo_state(repo_path)
    proc = cli("prune", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "no space left on device" in err and "prune stopped" in err and "consistent" in err
    assert one_error_line(err)
    # The packs with nothing in use went first (that is what makes room); the new packs that did
    # not fit were removed again; check and restore prove nothing in use was lost.
    assert {k for k in repo_state(repo_path) if k.startswith("data/")} < {k for k in state if k.startswith("data/")}
    cli("check", "--read-data")
    verify_restore(cli, s2, src, expected, tmp_path / "r1")
    (small_fs / "filler").unlink()
    out = prune_json(cli)
    assert out["repack_packs"] >= 1 and out["packs_written"] >= 1
    cli("check", "--read-data")
    verify_restore(cli, s2, src, expected, tmp_path / "r2")


# ---------------------------------------------------------------- options


def test_parse_max_unused_and_sizes() -> None:
    assert parse_max_unused("5%") == MaxUnused(5.0, None)
    assert parse_max_unused("unlimited").limit(10**9) == float("inf")
    assert parse_max_unused("100M") == MaxUnused(None, 100 << 20)
    assert parse_size("1.5G") == 3 << 29 and parse_size("512k") == 512 << 10 and parse_size("1000") == 1000
    assert parse_size("2MiB") == 2 << 20
    # 10% of the repository after prune: 90 used bytes tolerate 10 unused ones
    assert parse_max_unused("10%").limit(90) == pytest.approx(10)
    for bad in ("-1%", "101%", "lots", "5x"):
        with pytest.raises(UsageError):
            parse_max_unused(bad)
    assert MaxUnused(0.0, None).limit(100) == 0


def test_parse_repack_threshold() -> None:
    assert parse_repack_threshold("10%") == 10.0 and parse_repack_threshold(" 15 ") == 15.0
    assert parse_repack_threshold("0%") == 0.0 and parse_repack_threshold("100%") == 100.0
    assert parse_repack_threshold("off") is None
    for bad in ("-1%", "101%", "lots", "10M"):
        with pytest.raises(UsageError):
            parse_repack_threshold(bad)


def test_bad_option_is_a_usage_error(pcli: CLI) -> None:
    for cmd in (("prune",), ("forget", "--keep-last", "1")):
        proc = pcli(*cmd, "--no-lock", check=False)
        assert proc.returncode == 2 and b"--no-lock cannot be used" in proc.stderr
        assert pcli(*cmd, "--no-lock", "--dry-run").returncode == 0
    proc = pcli("prune", "--max-unused", "lots", check=False)
    assert proc.returncode == 2 and b"invalid --max-unused 'lots'" in proc.stderr
    proc = pcli("forget", "--keep-last", "1", "--prune", "--repack-threshold", "lots", check=False)
    assert proc.returncode == 2 and b"invalid --repack-threshold 'lots'" in proc.stderr


# ---------------------------------------------------------------- in process, memory backend


class MemRepo:
    """Snapshots made directly through the Repository API: precise control over blobs and packs."""

    def __init__(self) -> None:
        self.backend = MemoryBackend()
        Repository.init(self.backend, PW, pack_size=1 << 20, kdf=CHEAP_KDF, compression="none").close()
        self.rng = random.Random(7)
        self.contents: dict[str, dict[bytes, list[bytes]]] = {}
        self.clock = 1_700_000_000 * 10**9

    def open(self, load_index: bool = True) -> Repository:
        repo = Repository.open(self.backend, PW)
        if load_index:
            repo.load_index()
        return repo

    def blobs(self, n: int, size: int = 20_000) -> list[bytes]:
        return [self.rng.randbytes(size) for _ in range(n)]

    def snapshot(self, files: dict[bytes, list[bytes]], repo: Repository | None = None) -> str:
        """One snapshot of /d/<name> for each file, every chunk its own blob."""
        own = repo is None
        repo = repo or self.open()
        nodes = []
        for name, chunks in sorted(files.items()):
            content, off = [], 0
            for chunk in chunks:
                content.append((off, repo.save_blob(DATA, chunk)[0]))
                off += len(chunk)
            nodes.append(Node(name=name, type=FILE, mode=0o644, size=off, content=content))
        sub = repo.save_tree(nodes)
        root = repo.save_tree([Node(name=b"d", type=DIR, mode=0o755, subtree=sub)])
        repo.flush()
        self.clock += 3600 * 10**9
        sid = repo.save_snapshot(Snapshot(self.clock, "host", "user", ["/d"], root))
        if own:
            repo.close()
        self.contents[sid] = files
        return sid

    def forget(self, *sids: str) -> None:
        for sid in sids:
            self.backend.remove(FileType.SNAPSHOT, sid)
            del self.contents[sid]

    def verify(self) -> None:
        """check --read-data passes and every snapshot left reads back exactly."""
        repo = self.open(load_index=False)
        try:
            result = Checker(repo).run(read_data=True)
            assert result.ok, result.errors
        finally:
            repo.close()
        repo = self.open()
        try:
            for sid, files in self.contents.items():
                root = repo.load_tree(repo.load_snapshot(sid).tree)
                sub = repo.load_tree(root[0].subtree)  # type: ignore[arg-type]
                assert {n.name for n in sub} == set(files)
                for node in sub:
                    data = b"".join(repo.load_blob(DATA, bid) for _o, bid in node.content or ())
                    assert data == b"".join(files[node.name])
        finally:
            repo.close()

    def prune(self, opts: PruneOptions | None = None, hook: Callable[[str], None] | None = None) -> dict[str, int]:
        repo = self.open(load_index=False)
        try:
            repo.lock(exclusive=True)
            plan = plan_prune(repo, opts or PruneOptions())
            return (execute(plan, hook=hook) if hook else execute(plan)).as_dict()
        finally:
            repo.close()

    def files(self, ftype: FileType) -> set[str]:
        return {n for n, _s in self.backend.list(ftype)}


def _mem_scenario() -> MemRepo:
    m = MemRepo()
    keep, drop = m.blobs(60), m.blobs(60)
    s1 = m.snapshot({f"f{i:03d}".encode(): [keep[i], drop[i]] for i in range(60)})
    s2 = m.snapshot({b"big": m.blobs(120)})
    m.snapshot({f"f{i:03d}".encode(): [keep[i]] for i in range(60)} | {b"new": m.blobs(10)})
    m.forget(s1, s2)
    return m


def _threshold_scenario() -> tuple[MemRepo, list[bytes], list[bytes]]:
    """Two data packs of 50 blobs, one 20% unused and one 4% unused, beside 500 blobs fully in use:
    the repository as a whole is only ~2.1% unused, within the default --max-unused of 5%."""
    m = MemRepo()
    a, b, c, d = m.blobs(40), m.blobs(10), m.blobs(48), m.blobs(2)
    e = m.blobs(500)
    t1 = m.snapshot({b"a": a, b"b": b})  # each snapshot flushes: one pack of its 50 blobs
    t2 = m.snapshot({b"c": c, b"d": d})
    t3 = m.snapshot({b"e": e})
    m.snapshot({b"a": a, b"c": c, b"e": e})  # no new data
    m.forget(t1, t2, t3)
    return m, b, d


def _plan(m: MemRepo, **opts: Any) -> Any:
    repo = m.open(load_index=False)
    try:
        return plan_prune(repo, PruneOptions(**opts))
    finally:
        repo.close()


def _partly_used_data_packs(plan: Any) -> dict[tuple[int, int], str]:
    """(blobs, blobs in use) of every partly used data pack -> its reason to be repacked ('' = kept)."""
    return {
        (p.count, p.used_count): p.reason for p in plan.repack + plan.keep if p.type == DATA and p.used_count < p.count
    }


def test_repack_threshold_repacks_a_pack_with_that_share_unused_even_within_max_unused() -> None:
    m, dropped20, dropped4 = _threshold_scenario()
    default = _plan(m)
    s = default.stats
    assert s.unused_bytes - sum(p.unused_bytes for p in default.repack if p.type == TREE) < 0.05 * s.used_bytes
    # the 20%-unused pack is repacked for the threshold (5% by default), the 4%-unused one is kept
    assert _partly_used_data_packs(default) == {(50, 40): "threshold", (50, 48): ""}
    assert {p.reason for p in default.repack if p.type == TREE} <= {"tree"}
    assert s.unused_after == pytest.approx(2 * 20_000, rel=0.01)
    # a lower threshold takes the 4% one too; 'off' is restic's rule alone: nothing, as within 5%
    assert _partly_used_data_packs(_plan(m, repack_threshold=3.0)) == {(50, 40): "threshold", (50, 48): "threshold"}
    assert _partly_used_data_packs(_plan(m, repack_threshold=None)) == {(50, 40): "", (50, 48): ""}
    assert _partly_used_data_packs(_plan(m, repack_threshold=20.0)) == {(50, 40): "threshold", (50, 48): ""}
    assert _partly_used_data_packs(_plan(m, repack_threshold=20.5)) == {(50, 40): "", (50, 48): ""}
    # --max-unused still decides first (emptiest first), and 'unlimited' repacks no data pack at all
    assert _partly_used_data_packs(_plan(m, max_unused=MaxUnused(0.0))) == {
        (50, 40): "max-unused",
        (50, 48): "max-unused",
    }
    assert _partly_used_data_packs(_plan(m, max_unused=MaxUnused(None, None), repack_threshold=0.0)) == {
        (50, 40): "",
        (50, 48): "",
    }
    # --max-repack-size bounds the threshold's repacking as well
    pack20 = next(p for p in default.repack if p.type == DATA)
    tree_bytes = sum(p.size for p in default.repack if p.type == TREE)
    capped = _plan(m, max_repack_size=tree_bytes + pack20.size - 1)
    assert _partly_used_data_packs(capped) == {(50, 40): "", (50, 48): ""}
    assert capped.stats.repack_bytes <= tree_bytes + pack20.size - 1
    assert _partly_used_data_packs(_plan(m, max_repack_size=tree_bytes + pack20.size)) == {
        (50, 40): "threshold",
        (50, 48): "",
    }

    # Carried out: the dropped blobs of the 20% pack are gone, the 4% pack stays as it is, and a
    # second prune has nothing left to do (the threshold does not keep rewriting what it made).
    packs_before = m.files(FileType.DATA)
    stats = m.prune()
    assert stats["repack_packs"] == default.stats.repack_packs and stats["packs_written"] >= 1
    m.verify()
    repo = m.open()
    try:
        assert all(repo.index.lookup(repo.blob_id(data)) is None for data in dropped20)
        assert all(repo.index.lookup(repo.blob_id(data)) is not None for data in dropped4)
    finally:
        repo.close()
    kept4 = [p.id.hex() for p in _plan(m).keep if p.used_count < p.count]
    assert kept4 == [p.id.hex() for p in default.keep if p.used_count < p.count] and kept4[0] in packs_before
    again = m.prune()
    assert again["repack_packs"] == again["delete_packs"] == 0


def test_repack_reads_each_pack_in_one_request_across_dead_blobs() -> None:
    """Live and dead blobs alternate in the first snapshot's packs: a repack reads through the
    dead ones instead of making one request per live blob (on S3 each request is a round trip)."""
    m = _mem_scenario()
    repo = m.open(load_index=False)
    try:
        repo.lock(exclusive=True)
        plan = plan_prune(repo, PruneOptions(max_unused=MaxUnused(0.0)))
        repacked = {p.id.hex() for p in plan.repack}
        assert any(p.type == DATA and 0 < p.used_count < p.count - 1 for p in plan.repack)
        loads: list[str] = []
        load = m.backend.load

        def counting_load(ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
            if ftype == FileType.DATA and name in repacked:
                loads.append(name)
            return load(ftype, name, offset, length)

        m.backend.load = counting_load  # type: ignore[method-assign]
        execute(plan)
    finally:
        m.backend.load = load  # type: ignore[method-assign]
        repo.close()
    assert sorted(loads) == sorted(repacked)  # one read per repacked pack
    m.verify()


def test_duplicate_blobs_from_concurrent_backups_are_deduplicated() -> None:
    m = MemRepo()
    chunks = m.blobs(100)
    a = m.open()
    b = m.open()  # loaded its index before `a` saved anything: it stores every blob again
    sa = m.snapshot({b"x": chunks}, repo=a)
    sb = m.snapshot({b"x": chunks}, repo=b)
    a.close()
    b.close()
    assert sa != sb
    m.verify()
    packs_before = len(m.files(FileType.DATA))
    stats = m.prune()
    assert stats["duplicate_blobs"] >= 100
    assert stats["delete_packs"] >= 2
    assert len(m.files(FileType.DATA)) < packs_before
    m.verify()
    repo = m.open(load_index=False)
    try:
        entries = [e.id for f in repo.index_files().values() for es in f.packs.values() for e in es]
    finally:
        repo.close()
    assert len(entries) == len(set(entries)), "every blob is stored once after prune"


def test_split_index_files_and_a_crash_between_them() -> None:
    """With small index files, a crash after the first part leaves the old index in force."""
    for phase in ("delete:index-partial", "repack:index-partial"):
        m = _mem_scenario()
        opts = PruneOptions(index_max_entries=30)

        class Crash(BaseException):
            pass

        def hook(p: str, phase: str = phase) -> None:
            if p == phase:
                raise Crash(p)

        with pytest.raises(Crash):
            m.prune(opts, hook)
        m.verify()
        m.prune(opts)
        m.verify()
        repo = m.open(load_index=False)
        try:
            files = repo.index_files()
        finally:
            repo.close()
        assert len(files) > 1
        assert all(sum(map(len, f.packs.values())) <= 30 or len(f.packs) == 1 for f in files.values())
        assert m.prune(opts)["repack_packs"] == 0


@pytest.mark.parametrize("phase", [p for p in PHASES])
def test_simulated_crash_at_every_phase_in_process(phase: str) -> None:
    """The in-process twin of the SIGKILL test (tests/test_prune_crash.py): fast, every phase."""
    m = _mem_scenario()

    class Crash(BaseException):
        pass

    def hook(p: str) -> None:
        if p == phase:
            raise Crash(p)

    opts = PruneOptions(index_max_entries=40)
    with pytest.raises(Crash):
        m.prune(opts, hook)
    m.verify()
    stats = m.prune(opts)
    m.verify()
    assert stats["unused_after"] <= 0.05 * (stats["used_bytes"] + stats["unused_after"])
    again = m.prune(opts)
    assert again["delete_packs"] == again["repack_packs"] == again["unindexed_packs"] == 0


def test_missing_tree_refusal_names_the_snapshot() -> None:
    m = MemRepo()
    sid = m.snapshot({b"a": m.blobs(3)})
    other = m.snapshot({b"b": m.blobs(3)})
    m.forget(other)
    repo = m.open()
    try:
        loc = repo.index.lookup(repo.load_snapshot(sid).tree)
    finally:
        repo.close()
    assert loc is not None
    m.backend.remove(FileType.DATA, loc.pack_id.hex())
    before = {t: m.files(t) for t in (FileType.DATA, FileType.INDEX)}
    with pytest.raises(PruneRefused, match=sid[:8]):
        m.prune()
    assert {t: m.files(t) for t in (FileType.DATA, FileType.INDEX)} == before


def test_storage_error_while_writing_the_index_removes_the_new_packs() -> None:
    m = _mem_scenario()
    real_save = m.backend.save

    def failing_save(ftype: FileType, name: str, data: bytes | memoryview) -> None:
        if ftype is FileType.INDEX:
            raise BackendError("cannot write index: no space left on device")
        real_save(ftype, name, data)

    m.backend.save = failing_save  # type: ignore[method-assign]
    packs = m.files(FileType.DATA)
    with pytest.raises(BackendError, match=r"prune stopped.*no space left"):
        m.prune()
    assert m.files(FileType.DATA) <= packs
    m.backend.save = real_save  # type: ignore[method-assign]
    m.verify()
    m.prune()
    m.verify()


def test_blob_table_finds_every_id_and_records_duplicates() -> None:
    rng = random.Random(9)
    ids = [rng.randbytes(32) for _ in range(5000)]
    a = [PackEntry(DATA, bid, i, 10, 10) for i, bid in enumerate(ids)]
    b = [PackEntry(TREE, bid, i, 20, 20) for i, bid in enumerate(ids[:10])]
    plain = IndexFile({b"a" * 32: a, b"b" * 32: b}, [b"s" * 32]).encode()
    t = BlobTable()
    sup, packs = t.add_index_file(plain)
    assert sup == [b"s" * 32] and packs == [(b"a" * 32, 0, 5000), (b"b" * 32, 5000, 10)]
    t.build_hash([(0, 5000), (5000, 10)])
    for i, bid in enumerate(ids):
        assert t.find(bid) == i
        assert t.entry(i) == a[i]
    assert t.lengths(0, 3) == [10, 10, 10] and t.lengths(5000, 2) == [20, 20]
    assert t.find(rng.randbytes(32)) == -1
    assert t.dups == {i: [5000 + i] for i in range(10)}
    assert t.copies(3) == [3, 5003]
    # prune writes index files from its records byte for byte as IndexFile does
    recs = bytes(t.recs)
    packs_out = [(b"a" * 32, entries_of(recs[: 5000 * REC_SIZE])), (b"b" * 32, entries_of(recs[5000 * REC_SIZE :]))]
    assert encode_index(packs_out, [b"s" * 32]) == plain
