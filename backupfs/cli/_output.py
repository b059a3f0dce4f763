"""The output streams every command shares: JSON documents on stdout, messages on stderr.

Kept apart from `_common` (which pulls in the backends and the repository) so that `main` can
report any error, as a line and with --json as a document, without importing them. A progress
line (`_progress`) may be on the terminal, drawn from another thread: every write here holds
one lock, and a message first clears that line and draws it again below the message.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, Protocol

from backupfs.cli._quote import escape

_lock = threading.RLock()


class StatusLine(Protocol):
    """What `_progress` registers while its line is on the terminal (called with the lock held)."""

    def clear(self) -> None: ...

    def redraw(self) -> None: ...


_status: StatusLine | None = None


def set_status_line(line: StatusLine | None) -> None:
    global _status
    with _lock:
        _status = line


def output_lock() -> threading.RLock:
    """The lock every write to stdout and stderr holds (a status line is drawn under it)."""
    return _lock


def print_json(obj: Any) -> None:
    with _lock:
        sys.stdout.write(json.dumps(obj, default=_json_default) + "\n")
        sys.stdout.flush()


def print_error_json(code: int, message: str) -> None:
    """The document a failure leaves on stdout with --json, as the last line there."""
    try:
        print_json({"message_type": "error", "code": code, "message": json_text(message)})
    except OSError:  # stdout is gone (a closed pipe): the line on stderr has to do
        pass


def json_text(text: str) -> str:
    """`text` as valid UTF-8: a byte that was not UTF-8 (a surrogate escape) written as `\\udcXX`."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def err(msg: str) -> None:
    """One line on stderr; stored names in it are escaped (they may hold newlines or escapes)."""
    with _lock:
        if _status is not None:
            _status.clear()
        sys.stderr.write(escape(msg) + "\n")
        if _status is not None:
            _status.redraw()
        sys.stderr.flush()


def print_line(text: str) -> None:
    """One line on stdout (a -v listing) while a status line may be on the terminal: the status
    line is cleared first and drawn again below, as `err` does. `text` is escaped already."""
    with _lock:
        if _status is not None:
            _status.clear()
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        if _status is not None:
            _status.redraw()


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3f} {unit}"
        n /= 1024
    return f"{n} B"
