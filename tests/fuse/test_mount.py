"""`backupfs mount` through the kernel: contents, metadata, concurrency, refresh, errors, unmount."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounting import CAN_MOUNT, SKIP_REASON, Cli, Mount, is_mounted
from support.richtree import make_rich_tree, rsync_diff

pytestmark = [pytest.mark.fuse, pytest.mark.skipif(not CAN_MOUNT, reason=SKIP_REASON)]

MiB = 1 << 20


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """Starts `backupfs -r REPO mount MNT` and waits until it answers; the finalizer unmounts
    whatever happened (SIGTERM, then SIGKILL and fusermount3 -u -z), so no test leaves a mount."""
    started: list[Mount] = []

    def start(cli: Cli, *extra: str, mountpoint: Path | None = None, ready: str = "snapshots") -> Mount:
        mnt = mountpoint or tmp_path / f"mnt{len(started)}"
        mnt.mkdir(exist_ok=True)
        log = tmp_path / f"mount{len(started)}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "backupfs", "-r", str(cli.repo), "mount", str(mnt), *extra, "--refresh", "0.5"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**cli.env, "PYTHONFAULTHANDLER": "1"},
            )
        m = Mount(proc, mnt, log)
        started.append(m)
        m.wait_for(lambda: proc.poll() is not None or is_mounted(mnt), what="the mount")
        if proc.poll() is not None:
            raise AssertionError(f"mount exited with {proc.returncode}: {m.stderr()}")
        m.wait_for(lambda: os.path.exists(mnt / ready), what="the mount to answer")
        return m

    yield start
    for m in started:
        if m.proc.poll() is None:
            m.proc.terminate()
            try:
                m.proc.wait(10)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()
        if is_mounted(m.path):
            subprocess.run(["fusermount3", "-u", "-z", str(m.path)], check=False, capture_output=True)


def only_snapshot(m: Mount) -> Path:
    (name,) = os.listdir(m.path / "snapshots")
    return m.path / "snapshots" / name


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cli, Path]:
    """One small repository shared by the tests that only need something to mount."""
    base = tmp_path_factory.mktemp("small")
    cli = Cli(base)
    src = base / "src"
    src.mkdir()
    (src / "file").write_text("x")
    cli("backup", src)
    return cli, src


def test_one_snapshot_at_the_root(cli: Cli, mount: Callable[..., Mount], tmp_path: Path) -> None:
    """`mount MNT SNAP`, as `borg mount REPO::ARCHIVE`: that snapshot's files at the mount point
    itself; SNAP:PATH puts a folder of it there."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "file").write_text("first\n")
    (src / "sub" / "inner").write_text("inner\n")
    cli("backup", src)
    (src / "file").write_text("second version\n")
    cli("backup", src)
    first, latest = json.loads(cli("snapshots", "--json").stdout)
    top = str(src).lstrip("/").split("/")[0]

    m = mount(cli, first["short_id"], ready=top)
    assert os.listdir(m.path) == [top]  # no snapshots/, ids/, latest: the snapshot's own root
    assert (m.path / str(src).lstrip("/") / "file").read_text() == "first\n"
    assert "mounted snapshot" in m.stderr()

    m2 = mount(cli, f"latest:{src}", ready="file")
    assert sorted(os.listdir(m2.path)) == ["file", "sub"]
    assert rsync_diff(src, m2.path) == ""  # the folder's own metadata at the root too
    assert m2.stop() == 0 and not is_mounted(m2.path)

    for bad in ("0000dead", f"latest:{src}/file", f"{latest['short_id']}:/no/such"):
        mnt = tmp_path / "mnt-bad"
        mnt.mkdir(exist_ok=True)
        proc = cli("mount", mnt, bad, check=False)
        assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1, proc.stderr
        assert not is_mounted(mnt)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_rich_tree_is_exact_through_the_mount_and_cp(cli: Cli, mount: Callable[..., Mount], tmp_path: Path) -> None:
    src = tmp_path / "src"
    manifest = make_rich_tree(src)
    cli("backup", src)
    m = mount(cli)
    inside = only_snapshot(m) / str(src).lstrip("/")
    # rsync -aHAX --checksum: contents, types, modes, owners, ns times, hardlinks, ACLs, xattrs
    assert rsync_diff(inside, src) == ""
    st = os.lstat(inside / "sparse" / "sparse64")
    assert st.st_blocks * 512 < 1 * MiB < st.st_size  # holes are not counted
    assert len({os.lstat(inside / p.relative_to(src)).st_ino for p in manifest["hardlinks"]}) == 1
    assert os.getxattr(inside / "xattrs" / "acl_file", "system.posix_acl_access") == os.getxattr(
        manifest["acl_file"], "system.posix_acl_access"
    )

    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(inside), str(copy)], check=True, capture_output=True)
    assert rsync_diff(src, copy) == ""
    for dirpath, _dirs, files in os.walk(src):
        for name in files:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink() and os.access(p, os.R_OK):
                assert sha256(p) == sha256(copy / p.relative_to(src)), p


def test_parallel_random_reads_mmap_and_sequential_copy(cli: Cli, mount: Callable[..., Mount], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(7).randbytes(64 * MiB)
    (src / "large.bin").write_bytes(data)
    cli("backup", src)
    m = mount(cli)
    large = only_snapshot(m) / str(src).lstrip("/") / "large.bin"
    errors: list[str] = []

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        with open(large, "rb", buffering=0) as f:
            for _ in range(40):
                size = rnd.choice((1, 4096, 100_000, 1 * MiB + 17, 3 * MiB))
                off = rnd.randrange(0, len(data) - size)
                if os.pread(f.fileno(), size, off) != data[off : off + size]:
                    errors.append(f"reader {seed}: wrong bytes at {off}+{size}")

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    with open(large, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert mm[:4096] == data[:4096]
        assert mm[40 * MiB : 40 * MiB + 12345] == data[40 * MiB : 40 * MiB + 12345]
        assert hashlib.sha256(mm).digest() == hashlib.sha256(data).digest()

    shutil.copyfile(large, tmp_path / "copied.bin")
    assert sha256(tmp_path / "copied.bin") == hashlib.sha256(data).hexdigest()


def _resident_bytes(path: Path) -> int:
    """How much of the file the kernel's page cache holds, without reading it (mincore)."""
    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            rc = libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec)
            assert rc == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
    finally:
        os.close(fd)
    return min(size, sum(mmap.PAGESIZE for v in vec if v & 1))


def test_small_files_opened_in_order_reach_the_page_cache_before_they_are_read(
    cli: Cli, mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """tar, cp -r and rsync open a folder's files in listing order: after the first few, the
    mount puts the next small files' contents into the kernel's page cache itself, so reading
    them sends no request to the mount process."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02}").write_bytes(os.urandom(5000 + 10 * i))
    cli("backup", src)
    m = mount(cli)
    folder = only_snapshot(m) / str(src).lstrip("/")
    names = sorted(os.listdir(folder))  # a readdirplus: the kernel now holds every entry's inode
    later = folder / names[20]  # nothing reads it before the check (opening it reads nothing)
    for name in names[:3]:
        assert (folder / name).read_bytes() == (src / name).read_bytes()
    deadline = time.monotonic() + 10
    while _resident_bytes(later) < later.stat().st_size:
        assert time.monotonic() < deadline, "the later file never reached the page cache"
        time.sleep(0.02)
    for name in names:  # and the contents the kernel holds are the right ones
        assert (folder / name).read_bytes() == (src / name).read_bytes()


def test_new_snapshots_appear_latest_moves_and_versions(cli: Cli, mount: Callable[..., Mount], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "notes.txt"
    f.write_text("first\n")
    cli("backup", src)
    m = mount(cli)
    first = os.readlink(m.path / "latest")
    for text in ("second\n", "third\n"):
        time.sleep(1.0)  # snapshot folders are named by second
        f.write_text(text)
        cli("backup", src, "--tag", "later")
    m.wait_for(lambda: len(os.listdir(m.path / "snapshots")) == 3, what="the new snapshots")
    names = sorted(os.listdir(m.path / "snapshots"))
    m.wait_for(lambda: os.readlink(m.path / "latest") == f"snapshots/{names[-1]}", what="latest to move")
    assert first == f"snapshots/{names[0]}"
    assert (m.path / "latest" / str(f).lstrip("/")).read_text() == "third\n"
    assert sorted(os.listdir(m.path / "tags" / "later")) == sorted([*names[1:], "latest"])
    assert os.readlink(m.path / "tags" / "later" / "latest") == names[-1]

    versions = m.path / "versions" / str(f).lstrip("/")
    assert sorted(os.listdir(versions)) == names
    assert [(versions / n).read_text() for n in names] == ["first\n", "second\n", "third\n"]

    snaps = json.loads(cli("snapshots", "--json").stdout)
    os.unlink(cli.repo / "snapshots" / snaps[-1]["id"])  # as `forget` would
    m.wait_for(lambda: len(os.listdir(m.path / "snapshots")) == 2, what="the forgotten snapshot to go")
    m.wait_for(lambda: os.readlink(m.path / "latest") == f"snapshots/{names[1]}", what="latest to move back")


def test_writes_fail_with_erofs(small: tuple[Cli, Path], mount: Callable[..., Mount]) -> None:
    cli, src = small
    m = mount(cli)
    inside = only_snapshot(m) / str(src).lstrip("/")
    attempts = [
        lambda: os.open(inside / "file", os.O_WRONLY),
        lambda: os.open(inside / "file", os.O_RDWR | os.O_APPEND),
        lambda: os.open(inside / "new", os.O_WRONLY | os.O_CREAT),
        lambda: os.mkdir(inside / "dir"),
        lambda: os.unlink(inside / "file"),
        lambda: os.rename(inside / "file", inside / "moved"),
        lambda: os.chmod(inside / "file", 0o600),
        lambda: os.utime(inside / "file"),
        lambda: os.truncate(inside / "file", 0),
        lambda: os.setxattr(inside / "file", "user.x", b"1"),
        lambda: os.symlink("file", inside / "link"),
        lambda: os.mkdir(m.path / "snapshots" / "mine"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno == errno.EROFS
    assert (inside / "file").read_text() == "x"


def test_flipped_byte_gives_eio_on_that_file_only(cli: Cli, mount: Callable[..., Mount], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "victim.bin").write_bytes(os.urandom(300_000))
    (src / "fine.txt").write_text("fine\n")
    cli("backup", src)
    # the victim's only chunk is the largest data blob; flip a byte in the middle of it
    packs = sorted((cli.repo / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    pack = packs[-1]
    raw = bytearray(pack.read_bytes())
    raw[150_000] ^= 0xFF
    pack.write_bytes(bytes(raw))
    m = mount(cli)
    inside = only_snapshot(m) / str(src).lstrip("/")
    with pytest.raises(OSError) as exc:
        (inside / "victim.bin").read_bytes()
    assert exc.value.errno == errno.EIO
    assert (inside / "fine.txt").read_text() == "fine\n"
    assert os.stat(inside / "victim.bin").st_size == 300_000
    m.wait_for(lambda: "victim.bin" in m.stderr(), what="the damage to be logged with the path")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "fusermount"])
def test_unmount_leaves_no_mount_and_no_process(small: tuple[Cli, Path], mount: Callable[..., Mount], how: str) -> None:
    cli, src = small
    m = mount(cli)
    path = only_snapshot(m) / str(src).lstrip("/") / "file"
    assert path.read_text() == "x"
    if how == "fusermount":
        subprocess.run(["fusermount3", "-u", str(m.path)], check=True)
        code = m.proc.wait(15)
    else:
        busy = os.open(path, os.O_RDONLY)  # a file held open must not keep it mounted
        try:
            code = m.stop(getattr(signal, how))
        finally:
            os.close(busy)  # answered by the kernel: the filesystem does not implement flush
    assert code == 0, m.stderr()
    assert not is_mounted(m.path)
    assert m.proc.poll() is not None
    assert "Traceback" not in m.stderr()


def test_clear_errors_for_bad_mount_points(
    small: tuple[Cli, Path], mount: Callable[..., Mount], tmp_path: Path
) -> None:
    cli, _src = small
    missing = cli("mount", tmp_path / "nope", check=False)
    assert missing.returncode == 2 and missing.stderr.count(b"\n") == 1 and b"does not exist" in missing.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    nonempty = cli("mount", full, check=False)
    assert nonempty.returncode == 2 and b"not empty" in nonempty.stderr and nonempty.stderr.count(b"\n") == 1
    m = mount(cli)
    busy = cli("mount", m.path, check=False)
    assert busy.returncode == 2 and b"busy" in busy.stderr and busy.stderr.count(b"\n") == 1


def test_damaged_index_is_skipped_by_the_mount(cli: Cli, mount: Callable[..., Mount], tmp_path: Path) -> None:
    """A damaged index file no longer stops the mount (issue 10): it is skipped with one warning
    naming it, the packs it listed are found from their own headers, and the file reads back as
    `ls` and `cat` see it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x" * 5000)
    cli("backup", src)
    (index,) = (cli.repo / "index").iterdir()
    data = bytearray(index.read_bytes())
    data[40] ^= 0xFF
    index.write_bytes(data)
    ls = cli("--no-cache", "ls", "latest", check=False)
    assert ls.returncode == 0, ls.stderr.decode()
    m = mount(cli, "--no-cache")
    snap = next((m.path / "snapshots").iterdir())
    assert (snap / str(src).lstrip("/") / "f").read_text() == "x" * 5000
    err = m.stderr()
    assert err.count(f"index file {index.name[:8]} is damaged and was skipped") == 1, err
    assert "internal error" not in err and "Traceback" not in err


def test_allow_other_enforces_stored_permissions(mount: Callable[..., Mount], tmp_path: Path) -> None:
    """Other users get in, and the kernel applies the stored modes (the paths must be
    traversable by them: pytest's own temporary folders are not)."""
    shared = Path(tempfile.mkdtemp(prefix="backupfs-mount-test-", dir="/var/tmp"))
    try:
        shared.chmod(0o755)
        src = shared / "src"
        src.mkdir(mode=0o755)
        (src / "public").write_text("public\n")
        (src / "private").write_text("private\n")
        (src / "private").chmod(0o600)
        cli = Cli(tmp_path)
        cli("backup", src)
        m = mount(cli, "--allow-other", mountpoint=shared / "mnt")
        inside = only_snapshot(m) / str(src).lstrip("/")

        def as_nobody(*cmd: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd], capture_output=True, check=False
            )

        assert as_nobody("cat", str(inside / "public")).stdout == b"public\n"
        denied = as_nobody("cat", str(inside / "private"))
        assert denied.returncode != 0 and b"Permission denied" in denied.stderr
        assert (inside / "private").read_text() == "private\n"  # root may
        assert m.stop() == 0
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(shared / "mnt")], check=False, capture_output=True)
        shutil.rmtree(shared, ignore_errors=True)
