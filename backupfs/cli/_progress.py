"""Progress while a command works: a status line on a terminal, status JSON lines with --json.

The services count what they do in plain counters (BackupStats and ScanTotals, RestoreStats,
CheckResult, PruneStats, CopyStats, a drill's DrillProgress) and never print. Here a ticker
thread reads those counters a few times a second and shows them, as restic does: on a terminal,
one line on stderr redrawn in place, cut to the terminal's width and cleared before any message (`_output.err` asks it to);
with --json, a `{"message_type": "status", ...}` line on stdout; with -q, or when stderr is no
terminal, nothing. BACKUPFS_PROGRESS_FPS sets how many times a second (restic's
RESTIC_PROGRESS_FPS).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import unicodedata
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from backupfs.cli._output import output_lock, print_json, set_status_line
from backupfs.cli._quote import escape, json_name

if TYPE_CHECKING:  # only the command that shows progress imports its service
    from backupfs.ops.backup import Archiver, BackupStats
    from backupfs.ops.check import CheckResult
    from backupfs.ops.copy import CopyStats
    from backupfs.ops.restore import RestoreStats
    from backupfs.ops.verify import DrillProgress
    from backupfs.prune.plan import PruneStats

FPS_ENV = "BACKUPFS_PROGRESS_FPS"
TERMINAL_FPS = 10.0
JSON_FPS = 1.0  # a log or a script reading the lines needs no more
MAX_FPS = 60.0
DEFAULT_WIDTH = 80  # for a terminal that says it has 0 columns (serial consoles, some CI)
ELLIPSIS = "…"
MIN_PATH_COLUMNS = 12  # narrower than this, the current file is left out rather than cut


@dataclasses.dataclass
class Figures:
    """What a command has done at one moment. `total_*` is None while unknown; `exact_total` says
    whether the totals are final (the scanner is done), which percent and ETA wait for."""

    unit: str  # what is counted: "files", "packs", "snapshots"
    done: int | None  # None: not counted (a stream is one file, however long)
    done_bytes: int | None = None
    total: int | None = None
    total_bytes: int | None = None
    exact_total: bool = True
    errors: int = 0
    verb: str = ""  # "restored", "read": said after the bytes
    current: bytes | None = None


class Progress:
    """Shows `figures()` from a ticker thread while the `with` block runs."""

    def __init__(self, quiet: bool, json: bool, figures: Callable[[], Figures]) -> None:
        self._figures = figures
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = ""  # the text now on the terminal, "" when cleared
        self._start = time.monotonic()
        self.mode = progress_mode(quiet, json)
        fps = _fps(TERMINAL_FPS if self.mode == "terminal" else JSON_FPS)
        self._interval = 1.0 / fps

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self.mode != "off":
            if self.mode == "terminal":
                set_status_line(self)
            self._thread = threading.Thread(target=self._run, name="bfs-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.mode == "terminal":
            with output_lock():
                self.clear()
                set_status_line(None)

    def _run(self) -> None:
        if self.mode == "terminal":
            self._tick()
        while not self._stop.wait(self._interval):
            self._tick()

    def _tick(self) -> None:
        figures = self._figures()
        elapsed = time.monotonic() - self._start
        if self.mode == "json":
            print_json(status_json(figures, elapsed))
            return
        text = status_line(figures, elapsed, terminal_width())
        with output_lock():
            if not self._stop.is_set():
                self._shown = text
                self.redraw()

    # the StatusLine protocol of `_output`, called with the output lock held
    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def redraw(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K" + self._shown)
            sys.stderr.flush()


def progress_mode(quiet: bool, json: bool) -> str:
    """"terminal", "json" or "off": what Progress will do (a backup scans ahead only if shown)."""
    if quiet:
        return "off"
    if json:
        return "json"
    return "terminal" if sys.stderr.isatty() else "off"


def _fps(default: float) -> float:
    try:
        fps = float(os.environ.get(FPS_ENV, ""))
    except ValueError:
        return default
    return min(fps, MAX_FPS) if fps > 0 else default


def terminal_width() -> int:
    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except OSError:
        return DEFAULT_WIDTH
    return columns or DEFAULT_WIDTH


def clock(seconds: float) -> str:
    """`4:05`, or `1:02:03` past an hour (restic's form)."""
    s = int(seconds)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02}:{rest % 60:02}" if h else f"{rest // 60}:{rest % 60:02}"


def _fraction(f: Figures) -> float | None:
    """Share done (0..1) once the totals are final; by bytes where there are any."""
    if not f.exact_total or f.total is None:
        return None
    if f.total_bytes and f.done_bytes is not None:
        return min(1.0, f.done_bytes / f.total_bytes)
    return min(1.0, (f.done or 0) / f.total) if f.total else 1.0


def _remaining(f: Figures, elapsed: float) -> float | None:
    fraction = _fraction(f)
    if fraction is None or fraction == 0:
        return None
    return elapsed * (1 - fraction) / fraction


def status_line(f: Figures, elapsed: float, width: int) -> str:
    """`[0:12] 45.1% 1234/5678 files 1.2 GiB/3.4 GiB 0 errors ETA 0:15 …/current/file`, cut to
    `width` - 1 columns (the last column would wrap on some terminals); a `+` marks a total the
    scanner is still counting."""
    parts = [f"[{clock(elapsed)}]"]
    fraction = _fraction(f)
    if fraction is not None:
        parts.append(f"{100 * fraction:.1f}%")
    more = "" if f.exact_total else "+"
    if f.done is not None:
        count = f"{f.done}/{f.total}{more} {f.unit}" if f.total is not None else f"{f.done} {f.unit}"
        parts.append(f"{count} {f.verb}".rstrip() if f.done_bytes is None else count)
    if f.done_bytes is not None:
        size = short_size(f.done_bytes)
        if f.total_bytes is not None:
            size += f"/{short_size(f.total_bytes)}{more}"
        parts.append(f"{size} {f.verb}".rstrip())
    parts.append(f"{f.errors} error{'s' if f.errors != 1 else ''}")
    remaining = _remaining(f, elapsed)
    if remaining is not None:
        parts.append(f"ETA {clock(remaining)}")
    head = " ".join(parts)
    room = width - 1
    if f.current:
        left = room - _columns(head) - 1
        if left >= MIN_PATH_COLUMNS:
            return f"{head} {_cut_left(escape(f.current), left)}"
    return _cut_right(head, room)


def short_size(n: int) -> str:
    """`18.1 MiB`: three figures are enough on a line that changes ten times a second."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def status_json(f: Figures, elapsed: float) -> dict[str, object]:
    """restic's status message, with our unit in the key names (`files_done`, `packs_done`)."""
    fraction = _fraction(f)
    remaining = _remaining(f, elapsed)
    doc: dict[str, object] = {
        "message_type": "status",
        "seconds_elapsed": int(elapsed),
        "seconds_remaining": None if remaining is None else int(remaining),
        "percent_done": None if fraction is None else round(fraction, 4),
        f"total_{f.unit}": f.total,
        f"{f.unit}_done": f.done,
        "scan_finished": f.exact_total,
        "error_count": f.errors,
    }
    if f.done_bytes is not None:
        doc["total_bytes"] = f.total_bytes
        doc["bytes_done"] = f.done_bytes
    if f.current is not None:
        doc["current_files"] = [json_name("path", f.current)] if f.current else []
    return doc


def _char_columns(ch: str) -> int:
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1


def _columns(text: str) -> int:
    return sum(_char_columns(ch) for ch in text)


def _cut_left(text: str, room: int) -> str:
    """The end of `text` in `room` columns, `…` where the start was cut (a path's end says most)."""
    if _columns(text) <= room:
        return text
    kept: list[str] = []
    used = _columns(ELLIPSIS)
    for ch in reversed(text):
        used += _char_columns(ch)
        if used > room:
            break
        kept.append(ch)
    return ELLIPSIS + "".join(reversed(kept))


def _cut_right(text: str, room: int) -> str:
    out: list[str] = []
    used = 0
    for ch in text:
        used += _char_columns(ch)
        if used > room:
            break
        out.append(ch)
    return "".join(out)


# ---------------------------------------------------------------- what each command shows


def backup_figures(archiver: Archiver) -> Callable[[], Figures]:
    """Files and bytes done of what the scanner has counted so far."""

    def figures() -> Figures:
        s, t = archiver.stats, archiver.totals
        return Figures(
            unit="files",
            done=s.files_new + s.files_changed + s.files_unchanged,
            done_bytes=s.bytes_done,
            total=t.files,
            total_bytes=t.bytes,
            exact_total=t.finished,
            errors=len(s.skipped),
            current=archiver.current,
        )

    return figures


def stream_figures(stats: BackupStats) -> Callable[[], Figures]:
    """A stdin backup: how much has been read; the end is unknown."""
    return lambda: Figures(unit="files", done=None, done_bytes=stats.bytes_read, verb="read")


def restore_figures(stats: RestoreStats, total_files: int | None, total_bytes: int | None) -> Callable[[], Figures]:
    """Files and bytes written (or found there already, --overwrite), of the snapshot's own
    totals when the whole of it is restored."""
    return lambda: Figures(
        unit="files",
        done=stats.files + stats.kept_files,
        done_bytes=stats.bytes_written + stats.kept_bytes,
        total=total_files,
        total_bytes=total_bytes,
        errors=len(stats.errors),
        verb="restored",
    )


def check_figures(result: CheckResult) -> Callable[[], Figures]:
    """Packs read of those chosen; before reading starts, the structure checks (no total yet)."""
    return lambda: Figures(
        unit="packs",
        done=result.packs_read,
        total=result.packs_to_read or None,
        errors=len(result.errors),
        verb="read",
    )


def prune_figures(stats: PruneStats) -> Callable[[], Figures]:
    """Packs repacked of those the plan repacks."""
    return lambda: Figures(unit="packs", done=stats.packs_repacked, total=stats.repack_packs, verb="repacked")


def copy_figures(stats: CopyStats, total: int) -> Callable[[], Figures]:
    """Snapshots copied (or found there already) of those chosen, and the data copied."""
    return lambda: Figures(
        unit="snapshots", done=stats.copied + stats.skipped, done_bytes=stats.bytes_read, total=total, verb="copied"
    )


def drill_figures(
    latest: Callable[[], DrillProgress | None], planned_files: int, planned_bytes: int
) -> Callable[[], Figures]:
    """A restore drill (`verify`): sampled files checked of those drawn, the file last checked;
    files found wrong are its errors. `latest` is what the drill last reported (None at first)."""

    def figures() -> Figures:
        p = latest()
        return Figures(
            unit="files",
            done=p.files if p is not None else 0,
            done_bytes=p.nbytes if p is not None else 0,
            total=planned_files,
            total_bytes=planned_bytes,
            errors=p.failed if p is not None else 0,
            verb="verified",
            current=p.path if p is not None else None,
        )

    return figures
