"""The output streams every command shares: JSON documents on stdout, messages on stderr.

Kept apart from `_common` (which pulls in the backends and the repository) so that `main` can
report any error, as a line and with --json as a document, without importing them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from backupfs.cli._quote import escape


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def err(msg: str) -> None:
    """One line on stderr; stored names in it are escaped (they may hold newlines or escapes)."""
    sys.stderr.write(escape(msg) + "\n")


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3f} {unit}"
        n /= 1024
    return f"{n} B"
