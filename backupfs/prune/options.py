"""What the user may tune about prune: how much unused space to leave and how much to rewrite."""

from __future__ import annotations

import dataclasses
import re

from backupfs.errors import UsageError

__all__ = ["MaxUnused", "PruneOptions", "parse_max_unused", "parse_repack_threshold", "parse_size"]


def parse_size(text: str) -> int:
    """`100M`, `1.5G`, `512k`, `1000` (bytes); binary units as restic (k=1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if m is None:
        raise UsageError(f"invalid size {text!r} (use e.g. 500M, 2G or a number of bytes)")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_"))


@dataclasses.dataclass(frozen=True, slots=True)
class MaxUnused:
    """How much unused space may remain: a share of the repository, a byte count, or no limit."""

    percent: float | None = 5.0
    bytes: int | None = None

    def limit(self, used: int) -> float:
        """The unused bytes tolerated next to `used` bytes in use."""
        if self.bytes is not None:
            return float(self.bytes)
        if self.percent is None or self.percent >= 100:
            return float("inf")
        # unused <= p% of (used + unused)  <=>  unused <= used * p / (100 - p)
        return used * self.percent / (100 - self.percent)

    def __str__(self) -> str:
        if self.bytes is not None:
            return f"{self.bytes} bytes"
        return "unlimited" if self.percent is None else f"{self.percent:g}%"


def parse_max_unused(text: str) -> MaxUnused:
    """`5%`, `100M` (absolute) or `unlimited`."""
    s = text.strip().lower()
    if s == "unlimited":
        return MaxUnused(None, None)
    if s.endswith("%"):
        try:
            pct = float(s[:-1])
        except ValueError:
            pct = -1.0
        if not 0 <= pct <= 100:
            raise UsageError(f"invalid --max-unused {text!r}: a percentage must be between 0% and 100%")
        return MaxUnused(pct, None)
    try:
        return MaxUnused(None, parse_size(text))
    except UsageError:
        raise UsageError(f"invalid --max-unused {text!r} (use e.g. 5%, 100M or unlimited)") from None


def parse_repack_threshold(text: str) -> float | None:
    """`10%` (or `10`): repack every data pack with at least that share unused; `off` for never."""
    s = text.strip().lower()
    if s in ("off", "none", "never"):
        return None
    try:
        pct = float(s.removesuffix("%"))
    except ValueError:
        pct = -1.0
    if not 0 <= pct <= 100:
        raise UsageError(f"invalid --repack-threshold {text!r} (use a percentage such as 10% or 'off')")
    return pct


@dataclasses.dataclass(frozen=True, slots=True)
class PruneOptions:
    max_unused: MaxUnused = MaxUnused()
    max_repack_size: int | None = None  # total size of the packs chosen for repacking
    # A data pack with at least this percentage of its blob bytes unused is repacked even when the
    # repository as a whole is within max_unused: rewriting it costs at most (2 - t) / t bytes of
    # I/O per byte freed (39 at 5%). None: only max_unused decides (restic's rule).
    repack_threshold: float | None = 5.0
    # Index files prune writes hold at most this many entries, so reading one never needs much memory.
    index_max_entries: int = 50_000
