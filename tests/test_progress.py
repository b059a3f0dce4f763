"""Progress: on a real terminal (a pty) the backup's status line shows the total the scanner
counted, a percent and an ETA, fits the width and is cleared; with --json the same comes as
status lines; restore, check --read-data, prune's repack, copy, verify and stdin backups show
progress.

To see the line in the middle of a backup without depending on how fast the machine is, the
backup runs with its pack uploads held back (`GATED`): the real CLI, whose storage writes of
packs wait until the test opens a fifo. The backup then stops part-way, the scanner long done,
and shows its progress until the test lets it finish.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from conftest import CLI, PASSWORD
from everyday import fast_cli, open_repo

from backupfs.backends.local import LocalBackend
from backupfs.cli._progress import Figures, restore_figures, status_json, status_line
from backupfs.cli.snapshots import summary_count
from backupfs.ops.restore import Restorer
from backupfs.repository.repo import Repository

GATED = """
import sys, threading
from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.cli.main import main
gate = threading.Event()
def wait_for_test():
    with open(sys.argv[1], "rb") as f:
        f.read()
    gate.set()
threading.Thread(target=wait_for_test, daemon=True).start()
save = LocalBackend.save
def gated(self, ftype, name, data):
    if ftype is FileType.DATA:
        gate.wait()
    return save(self, ftype, name, data)
LocalBackend.save = gated
sys.exit(main(sys.argv[2:]))
"""
FILES = 48
FILE_SIZE = 512 * 1024
PACK_SIZE = 1 << 20  # small packs: the uploads in flight (4) fill long before the 24 MiB are read
STATUS = re.compile(
    r"\[(\d+:\d\d)\] (\d+\.\d)% (\d+)/(\d+) files ([\d.]+ \w+)/([\d.]+ \w+) (\d+) errors ETA (\d+:\d\d) (.*)"
)


@pytest.fixture
def gated_repo(tmp_path: Path, cli_env: dict[str, str]) -> tuple[CLI, Path]:
    repo = tmp_path / "repo"
    Repository.init(LocalBackend(str(repo)), PASSWORD.encode(), kdf=(1, 8 * 1024 * 1024), pack_size=PACK_SIZE).close()
    src = tmp_path / "src"
    src.mkdir()
    for i in range(FILES):
        (src / f"file-{i:02}").write_bytes(os.urandom(FILE_SIZE))
    return CLI(repo, cli_env), src


def gated_backup(cli: CLI, fifo: Path, *args: str, **popen: object) -> subprocess.Popen[bytes]:
    os.mkfifo(fifo)
    return subprocess.Popen(
        [sys.executable, "-c", GATED, str(fifo), "-r", str(cli.repo), "backup", *args],
        env={**cli.env, "BACKUPFS_PROGRESS_FPS": "50"},
        stdin=subprocess.DEVNULL,
        **popen,  # type: ignore[call-overload]
    )


def release(fifo: Path) -> None:
    with open(fifo, "wb"):
        pass


def read_until(fd: int, found: object, what: str) -> bytes:
    """Reads `fd` until `found(all read so far)` holds (the backup cannot end before: it waits)."""
    out = b""
    while not found(out):  # type: ignore[operator]
        ready, _, _ = select.select([fd], [], [], 120)
        assert ready, f"no {what} in 120 s: {out[-2000:]!r}"
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other side closed
            chunk = b""
        assert chunk, f"ended before {what}: {out[-2000:]!r}"
        out += chunk
    return out


def drain(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return out
        if not chunk:
            return out
        out += chunk


def terminal(columns: int) -> tuple[int, int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    return master, slave


def drawn(raw: bytes) -> list[str]:
    """The texts the status line showed: each drawing starts with `\\r` and erase-to-end-of-line."""
    return [part for part in raw.decode("utf-8", "replace").split("\r\x1b[K")[1:] if part]


def mid_backup(line: str) -> bool:
    m = STATUS.fullmatch(line)
    return m is not None and float(m[2]) < 100 and int(m[4]) == FILES


@pytest.mark.parametrize("columns", [0, 100])
def test_backup_line_shows_total_percent_and_eta_and_fits(
    gated_repo: tuple[CLI, Path], tmp_path: Path, columns: int
) -> None:
    """0 columns (a terminal that does not say) is taken as 80."""
    cli, src = gated_repo
    master, slave = terminal(columns)
    fifo = tmp_path / "gate"
    proc = gated_backup(cli, fifo, str(src), stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    try:
        out = read_until(master, lambda raw: any(mid_backup(t) for t in drawn(raw)[:-1]), "mid-backup status line")
        release(fifo)
        out += drain(master)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    lines = drawn(out)
    middle = next(m for m in map(STATUS.fullmatch, lines) if m and float(m[2]) < 100)
    assert middle[6] == "24.0 MiB" and middle[7] == "0"
    assert middle[9].rsplit("/", 1)[-1].startswith("file-")  # the file being read
    width = columns or 80
    assert all(len(t) <= width - 1 for t in lines), [t for t in lines if len(t) >= width]
    assert out.endswith(b"\r\x1b[K"), out[-200:]  # cleared: nothing of it stays on the terminal
    assert b"snapshot " in stdout


def test_json_status_lines_then_the_summary(gated_repo: tuple[CLI, Path], tmp_path: Path) -> None:
    cli, src = gated_repo
    fifo = tmp_path / "gate"
    proc = gated_backup(cli, fifo, str(src), "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:

        def has_status(raw: bytes) -> bool:
            docs = [json.loads(line) for line in raw.splitlines(keepends=True) if line.endswith(b"\n")]
            return any(d["message_type"] == "status" and (d["percent_done"] or 0) > 0 for d in docs)

        out = read_until(proc.stdout.fileno(), has_status, "status line with a percent")
        release(fifo)
        rest, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    docs = [json.loads(line) for line in (out + rest).splitlines()]
    assert [d["message_type"] for d in docs] == ["status"] * (len(docs) - 1) + ["summary"]
    status = next(d for d in docs if (d["percent_done"] or 0) > 0)
    assert status["total_files"] == FILES and status["total_bytes"] == FILES * FILE_SIZE and status["scan_finished"]
    assert 0 < status["percent_done"] < 1 and status["seconds_remaining"] is not None
    assert status["files_done"] < FILES and status["error_count"] == 0
    assert all(c["path"].startswith(str(src)) for c in status["current_files"])
    assert b"\x1b" not in stderr  # no terminal line where no terminal is


def on_a_terminal(cli: CLI, *args: str | os.PathLike[str], env: dict[str, str] | None = None) -> list[str]:
    """What a command drew on a 200-column terminal's stderr."""
    master, slave = terminal(200)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backupfs", "-r", str(cli.repo), *map(str, args)],
            env={**cli.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
        )
        os.close(slave)
        slave = -1
        out = drain(master)
        assert proc.wait(timeout=120) == 0, out
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return drawn(out)


def test_other_commands_show_progress_on_a_terminal(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(5000))
    cli("backup", src)
    restored = on_a_terminal(cli, "restore", "latest", "--target", tmp_path / "r")
    assert any(re.fullmatch(r"\[\d+:\d\d\] .*\d+/20 files .* restored 0 errors.*", t) for t in restored), restored
    checked = on_a_terminal(cli, "check", "--read-data")
    assert any(re.fullmatch(r"\[\d+:\d\d\] .*packs read 0 errors.*", t) for t in checked), checked
    other = fast_cli(tmp_path, cli_env, "other")
    copied = on_a_terminal(other, "copy", "--from-repo", cli.repo, env={"BACKUPFS_FROM_PASSWORD": PASSWORD})
    assert any(re.fullmatch(r"\[\d+:\d\d\] .*/1 snapshots .* copied 0 errors.*", t) for t in copied), copied
    stdin_lines = on_a_terminal(cli, "backup", "--stdin-from-command", "--", "head", "-c", "100000", "/dev/zero")
    assert any(re.fullmatch(r"\[\d+:\d\d\] [\d.]+ \w+ read 0 errors", t) for t in stdin_lines), stdin_lines
    for i in range(10):  # the pack of the first backup keeps only half in use: it is repacked
        (src / f"f{i}").unlink()
    cli("backup", src)
    cli("forget", "--keep-last", "1")
    repacked = on_a_terminal(cli, "prune", "--repack-threshold", "1%")
    assert any(re.fullmatch(r"\[\d+:\d\d\] .*/\d+ packs repacked 0 errors.*", t) for t in repacked), repacked
    assert on_a_terminal(cli, "check", "--read-data", "-q") == []
    assert b"\x1b" not in cli("restore", "latest", "--target", tmp_path / "r2").stderr  # no terminal: no line


def test_the_line_is_cut_to_the_width_from_the_path_start() -> None:
    path = "/home/user/日本/notes.txt"  # 日 and 本 take two columns each
    f = Figures(unit="files", done=5, done_bytes=3 << 20, total=10, total_bytes=6 << 20, current=path.encode())
    head = "[1:05] 50.0% 5/10 files 3.0 MiB/6.0 MiB 0 errors ETA 1:05"
    assert status_line(f, 65, 200) == f"{head} {path}"
    assert status_line(f, 65, len(head) + 14) == f"{head} …/notes.txt"  # 12 columns for the path
    assert status_line(f, 65, len(head) + 13) == head  # 11: too few to be of use
    assert status_line(f, 65, 20) == head[:19]
    counting = Figures(unit="files", done=5, done_bytes=3 << 20, total=10, total_bytes=6 << 20, exact_total=False)
    assert status_line(counting, 5, 200) == "[0:05] 5/10+ files 3.0 MiB/6.0 MiB+ 0 errors"
    doc = status_json(counting, 5)
    assert doc["percent_done"] is None and doc["seconds_remaining"] is None and doc["total_files"] == 10


def test_the_scanned_total_is_what_the_backup_saves(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """The scanner leaves out what the walk leaves out (patterns with `!` and ignoring case, tag
    files, --exclude-larger-than, paths from --files-from): a total that counted more would keep
    the percent and ETA short of the end. The backup waits at its last pack upload (GATED) until
    the scanner has said its total is final."""
    cli = fast_cli(tmp_path, cli_env)
    tree = tmp_path / "tree"
    files = {
        "keep/a.txt": b"kept\n",
        "keep/big.bin": b"x" * 5000,  # larger than 4K
        "keep/B.TMP": b"ignoring case\n",
        "logs/x.log": b"left out\n",
        "logs/keep.log": b"taken back by !\n",
        "tagged/.nobackup": b"",
        "tagged/secret": b"inside a tagged folder\n",
        "cache/CACHEDIR.TAG": b"Signature: 8a477f597d28d172789f06886806bc55\n",
        "cache/blob": b"cached\n",
        "other/unlisted": b"not in the list\n",
    }
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    listed = tmp_path / "list"
    listed.write_text(f"# what to back up\n{tree}/keep\n{tree}/l*s\n{tree}/tagged\n{tree}/cache\n")
    saved = ["keep/a.txt", "logs/keep.log", "tagged/.nobackup", "cache/CACHEDIR.TAG"]
    options = ["--files-from", str(listed), "--exclude", "*.log", "--exclude", "!keep.log", "--iexclude", "*.tmp"]
    options += ["--exclude-if-present", ".nobackup", "--exclude-caches", "--exclude-larger-than", "4K", "--json"]
    fifo = tmp_path / "gate"
    proc = gated_backup(cli, fifo, *options, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:

        def final_total(raw: bytes) -> bool:
            docs = [json.loads(line) for line in raw.splitlines(keepends=True) if line.endswith(b"\n")]
            return any(d["message_type"] == "status" and d["scan_finished"] for d in docs)

        out = read_until(proc.stdout.fileno(), final_total, "status line with the scanner's final total")
        release(fifo)
        rest, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    docs = [json.loads(line) for line in (out + rest).splitlines()]
    status = next(d for d in docs if d["message_type"] == "status" and d["scan_finished"])
    summary = docs[-1]
    assert summary["total_files_processed"] == len(saved)
    assert summary["total_bytes_processed"] == sum(len(files[name]) for name in saved)
    assert (status["total_files"], status["total_bytes"]) == (len(saved), summary["total_bytes_processed"])


def test_a_restore_over_its_own_files_reaches_the_total(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """A second restore into the same folder writes nothing (the files there are the snapshot's):
    they count as done, so the line ends at 100%, not at 0 of the snapshot's totals."""
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(5000))
    cli("backup", src)
    cli("restore", "latest", "--target", tmp_path / "r")
    repo = open_repo(cli.repo)
    try:
        _sid, snap = repo.find_snapshot("latest")
        restorer = Restorer(repo, snap.tree, str(tmp_path / "r"))
        totals = [summary_count(snap.summary, key) for key in ("total_files_processed", "total_bytes_processed")]
        figures = restore_figures(restorer.stats, *totals)
        stats = restorer.run()
    finally:
        repo.close()
    assert stats.files == 0 and stats.bytes_written == 0 and stats.unchanged >= 20  # nothing written
    doc = status_json(figures(), 1.0)
    assert (doc["files_done"], doc["bytes_done"], doc["percent_done"]) == (20, 20 * 5000, 1.0), doc


def test_verify_shows_progress_on_a_terminal_and_as_json(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(os.urandom(5000))
    cli("backup", src)
    drawn_lines = on_a_terminal(cli, "verify", "--files", "5")
    assert any(re.fullmatch(r"\[\d+:\d\d\] [\d.]+% \d/5 files .* verified 0 errors.*", t) for t in drawn_lines), drawn_lines
    proc = cli("verify", "--files", "5", "--json")
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["message_type"] for d in docs] == ["status"] * (len(docs) - 1) + ["summary"]
    assert docs[-1]["files_verified"] == 5


def test_verbose_lines_go_above_the_status_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """`backup -v` on a terminal: each listed entry starts a line of its own; the status line is
    cleared before it and drawn again below, never left with a listing glued to its end."""
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(5000))
    master, slave = terminal(200)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backupfs", "-r", str(cli.repo), "backup", "-v", str(src)],
            env={**cli.env, "BACKUPFS_PROGRESS_FPS": "60"},
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        slave = -1
        out = drain(master).decode("utf-8", "replace")
        assert proc.wait(timeout=120) == 0, out
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert "\x1b[K[0:" in out, out  # a status line was drawn
    starts = [m.start() for m in re.finditer(r"new {7}/", out)]
    assert len(starts) == 20 + 1, out  # the files and the folder
    for at in starts:
        assert out[:at].endswith(("\n", "\r\x1b[K")), repr(out[max(0, at - 80) : at + 20])
