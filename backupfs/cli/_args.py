"""Argument types every command shares: durations and points in time, parsed one way everywhere."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime

# unit -> seconds; restic's (Go's) duration units plus days, which Go lacks but users type
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# restic's `find --oldest/--newest` formats (local time unless a zone is given), then ISO 8601
_TIME_FORMATS = (
    "%Y-%m-%d",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M:%S %z",
    "%d.%m.%Y",
    "%d.%m.%Y %H:%M",
    "%d.%m.%Y %H:%M:%S",
    "%d.%m.%Y %H:%M:%S %z",
)


def parse_duration(text: str, default_unit: str = "s") -> float:
    """`90`, `30s`, `5m`, `2h`, `1h30m`, `7d` -> seconds; a bare number is in `default_unit`.

    Raises ValueError with a message fit for the user."""
    s = text.strip().lower()
    if _NUMBER.fullmatch(s):
        return float(s) * _UNITS[default_unit]
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m[1]) * _UNITS[m[2]]
        pos = m.end()
    if pos == 0 or pos != len(s):
        raise ValueError(f"invalid duration {text!r} (examples: 30s, 5m, 2h, 1h30m, 7d)")
    return total


def duration(text: str) -> float:
    """argparse type: a duration in seconds (a bare number is seconds)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def days(text: str) -> float:
    """argparse type: a duration in seconds where a bare number counts days (`cache --max-age 30`)."""
    try:
        return parse_duration(text, default_unit="d")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_time(text: str) -> int:
    """A point in time as restic's find takes it (`2024-05-01`, `2024-05-01 13:00`, `01.05.2024`, RFC
    3339), local time unless it names a zone -> nanoseconds since the epoch."""
    s = text.strip()
    for fmt in _TIME_FORMATS:
        try:
            when = datetime.strptime(s, fmt)
        except ValueError:
            continue
        return _to_ns(when)
    try:
        return _to_ns(datetime.fromisoformat(s))
    except ValueError:
        raise ValueError(
            f"invalid time {text!r} (examples: 2024-05-01, '2024-05-01 13:30', 2024-05-01T13:30:00Z)"
        ) from None


def point_in_time(text: str) -> int:
    """argparse type for parse_time."""
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _to_ns(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.astimezone()  # naive: local time
    delta = when - _EPOCH  # exact, unlike timestamp()'s float
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
