"""Retention policy for `forget`: which snapshots of a group to keep, and why.

Layer 0: pure functions over plain values, no I/O and no clock. The semantics follow restic's
`forget` (doc/060_forget.rst) so that users can carry their policies over unchanged:

* Snapshots are ordered newest first (ties: by id) and every rule is evaluated on every snapshot; a
  snapshot is kept if any rule keeps it (the results are ORed) and lists every rule that did.
* `keep_<period> n` keeps the newest snapshot of each of the `n` newest periods that have a
  snapshot; periods are calendar periods (ISO weeks, Monday first) of each snapshot's own local
  time. `-1` means unlimited. If a rule still has slots left when the oldest snapshot is reached,
  that snapshot is kept too ("oldest daily snapshot"), so a young repository keeps its full history.
* `keep_within d` keeps everything newer than "latest snapshot minus d", computed on the calendar.
  "Latest" is the newest snapshot of the group, not the current time, so a host that stopped backing
  up does not lose its last backups; snapshots later than `now` (when given) are ignored for it.
* `keep_within_<period> d` applies the period rule, without a count, to the snapshots within `d`.
* `keep_tags` keeps every snapshot carrying all tags of at least one of the tag sets.

Two corners follow the documentation rather than restic's code, and are tested as such: a period
whose snapshots are interleaved with another's (clocks in several zones) still keeps only its newest
snapshot, and "31 March minus 1m" is 29 February, not 2 March.
"""

from __future__ import annotations

import calendar
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from datetime import UTC, datetime, timedelta
from typing import Generic, Protocol, TypeVar

from backupfs.errors import BackupfsError, UsageError

__all__ = [
    "DEFAULT_GROUP_BY",
    "GROUP_BY_FIELDS",
    "UNLIMITED",
    "Decision",
    "Duration",
    "GroupKey",
    "GroupPlan",
    "Policy",
    "PolicySnapshot",
    "SnapshotLike",
    "apply_policy",
    "filter_snapshots",
    "group_snapshots",
    "matches_tag_set",
    "parse_duration",
    "parse_group_by",
    "parse_keep_count",
    "parse_tag_set",
    "plan_forget",
    "sort_newest_first",
]

UNLIMITED = -1
GROUP_BY_FIELDS = frozenset({"host", "paths", "tags"})
DEFAULT_GROUP_BY = frozenset({"host", "paths"})


class SnapshotLike(Protocol):
    """What the policy reads from a snapshot; `time` must be timezone-aware, in the zone to bucket in."""

    @property
    def id(self) -> str: ...

    @property
    def time(self) -> datetime: ...

    @property
    def host(self) -> str: ...

    @property
    def paths(self) -> Sequence[str]: ...

    @property
    def tags(self) -> Sequence[str]: ...


S = TypeVar("S", bound=SnapshotLike)


@dataclasses.dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """A minimal SnapshotLike, for callers that adapt their snapshots and for tests."""

    id: str
    time: datetime
    host: str = ""
    paths: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require_aware(self.time, f"snapshot {self.id} time")


def _require_aware(t: datetime, what: str) -> None:
    # A naive time has no calendar position we could defend; refuse rather than guess a zone.
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {t!r}")


# --------------------------------------------------------------------------------------------
# Durations


@dataclasses.dataclass(frozen=True, slots=True)
class Duration:
    """A calendar span (`2y5m7d3h`): months and years have no fixed length, so no timedelta."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __post_init__(self) -> None:
        if min(self.years, self.months, self.days, self.hours) < 0:
            raise ValueError(f"duration fields must not be negative: {self!r}")

    def is_zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def __str__(self) -> str:
        parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")]
        return "".join(f"{n}{unit}" for n, unit in parts if n) or "0h"

    def before(self, t: datetime) -> datetime | None:
        """`t` minus this span, or None if that lies before year 1 (then every time is "after" it).

        Years, months and days move the wall-clock date in `t`'s own zone (a day across a DST change
        is 23 or 25 hours, as on a calendar); a day-of-month the target month lacks is clamped to its
        last day (31 March minus 1m is 29 February); hours are then subtracted as elapsed time.
        """
        _require_aware(t, "reference time")
        month_index = t.year * 12 + (t.month - 1) - (self.years * 12 + self.months)
        year, month0 = divmod(month_index, 12)
        if year < 1:
            return None
        day = min(t.day, calendar.monthrange(year, month0 + 1)[1])
        try:
            shifted = t.replace(year=year, month=month0 + 1, day=day) - timedelta(days=self.days)
            return shifted.astimezone(UTC) - timedelta(hours=self.hours)
        except OverflowError:
            return None


def parse_duration(text: str) -> Duration:
    """Parse restic's duration syntax: numbers with units y, m, d, h in any order (`1y2m`, `7d`).

    Stricter than restic where restic silently does something surprising: a unit given twice, a
    negative number or an empty string is an error rather than "last one wins" or zero.
    """
    s = text.strip()
    example = "e.g. 2y5m7d3h (years, months, days, hours)"
    if not s:
        raise UsageError(f"empty duration: expected {example}")
    values: dict[str, int] = {}
    i = 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] in "0123456789":
            j += 1
        if j == i:
            if s[i] == "-":
                raise UsageError(f"invalid duration {text!r}: negative values are not allowed")
            raise UsageError(f"invalid duration {text!r}: expected a number at {s[i:]!r}, {example}")
        number = int(s[i:j])
        if j == len(s):
            raise UsageError(f"invalid duration {text!r}: number {number} has no unit (y, m, d or h)")
        unit = s[j]
        if unit not in "ymdh":
            hint = "; weeks are written as 7d" if unit == "w" else ""
            raise UsageError(
                f"invalid duration {text!r}: unknown unit {unit!r} after {number} (use y, m, d or h{hint})"
            )
        if unit in values:
            raise UsageError(f"invalid duration {text!r}: unit {unit!r} given twice")
        values[unit] = number
        i = j + 1
    return Duration(
        years=values.get("y", 0), months=values.get("m", 0), days=values.get("d", 0), hours=values.get("h", 0)
    )


# --------------------------------------------------------------------------------------------
# Policy


def parse_keep_count(text: str) -> int:
    """Parse a `--keep-<period>` value: a non-negative integer, or `unlimited` (or -1) for all."""
    s = text.strip()
    if s == "unlimited":
        return UNLIMITED
    try:
        n = int(s)
    except ValueError:
        raise UsageError(f"invalid count {text!r}: expected a number or 'unlimited'") from None
    if n < UNLIMITED:
        raise UsageError(f"invalid count {text!r}: negative values other than -1 are not allowed")
    return n


def parse_tag_set(text: str) -> frozenset[str]:
    """Parse one `--keep-tag`/`--tag` value: comma-separated tags that must all be present.

    `''` gives `{""}`, which matches untagged snapshots only (as restic).
    """
    return frozenset(t.strip() for t in text.split(","))


def matches_tag_set(snapshot_tags: Iterable[str], tag_set: Set[str]) -> bool:
    """Whether a snapshot carries every tag of `tag_set`; the empty tag stands for "no tags at all"."""
    have = frozenset(snapshot_tags)
    if "" in tag_set:
        return not have and tag_set <= {""}
    return tag_set <= have


_COUNT_RULES = (
    ("keep_last", "last"),
    ("keep_hourly", "hourly"),
    ("keep_daily", "daily"),
    ("keep_weekly", "weekly"),
    ("keep_monthly", "monthly"),
    ("keep_yearly", "yearly"),
)
_WITHIN_RULES = (
    ("keep_within_hourly", "hourly"),
    ("keep_within_daily", "daily"),
    ("keep_within_weekly", "weekly"),
    ("keep_within_monthly", "monthly"),
    ("keep_within_yearly", "yearly"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """The `--keep-*` options. Counts: None/0 off, n > 0, or -1 (UNLIMITED). Durations: None/zero off."""

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: Duration | None = None
    keep_within_hourly: Duration | None = None
    keep_within_daily: Duration | None = None
    keep_within_weekly: Duration | None = None
    keep_within_monthly: Duration | None = None
    keep_within_yearly: Duration | None = None
    keep_tags: tuple[frozenset[str], ...] = ()

    def __post_init__(self) -> None:
        for name, _ in _COUNT_RULES:
            n = getattr(self, name)
            if n is not None and n < UNLIMITED:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} {n}: negative values other than -1 (unlimited) are not allowed")

    def count(self, name: str) -> int:
        """The count of rule `name` (e.g. "keep_daily"), 0 when off."""
        n: int | None = getattr(self, name)
        return n or 0

    def duration(self, name: str) -> Duration | None:
        """The duration of rule `name` (e.g. "keep_within_daily"), None when off."""
        d: Duration | None = getattr(self, name)
        return None if d is None or d.is_zero() else d

    def is_empty(self) -> bool:
        """True when no option is set; forget must then refuse rather than delete everything."""
        return (
            not self.keep_tags
            and not any(self.count(name) for name, _ in _COUNT_RULES)
            and self.duration("keep_within") is None
            and not any(self.duration(name) for name, _ in _WITHIN_RULES)
        )

    def describe(self) -> str:
        """One line for "Applying policy: ...", e.g. `keep 7 daily, all weekly snapshots`."""
        counts = []
        for name, period in _COUNT_RULES:
            label = "latest" if period == "last" else period
            n = self.count(name)
            if n == UNLIMITED:
                counts.append(f"all {label}")
            elif n > 0:
                counts.append(f"{n} {label}")
        parts = [", ".join(counts) + " snapshots"] if counts else []
        parts += [
            f"{period} snapshots within {d}" for name, period in _WITHIN_RULES if (d := self.duration(name)) is not None
        ]
        text = ", ".join(parts)
        extra = []
        if self.keep_tags:
            extra.append("all snapshots with tags " + " or ".join(_tag_set_str(t) for t in self.keep_tags))
        if (within := self.duration("keep_within")) is not None:
            extra.append(f"all snapshots within {within} of the newest")
        text = " and ".join(([text] if text else []) + extra)
        return "keep " + text if text else "keep everything (empty policy)"


def _tag_set_str(tags: Set[str]) -> str:
    return "[" + ", ".join(t or "''" for t in sorted(tags)) + "]"


# --------------------------------------------------------------------------------------------
# Applying a policy


@dataclasses.dataclass(frozen=True, slots=True)
class Decision(Generic[S]):
    """The verdict on one snapshot; `reasons` is empty exactly when `keep` is False."""

    snapshot: S
    keep: bool
    reasons: tuple[str, ...]


def _hour(t: datetime, _: int) -> object:
    return (t.year, t.month, t.day, t.hour)


def _day(t: datetime, _: int) -> object:
    return (t.year, t.month, t.day)


def _week(t: datetime, _: int) -> object:
    iso = t.isocalendar()
    return (iso.year, iso.week)


def _month(t: datetime, _: int) -> object:
    return (t.year, t.month)


def _year(t: datetime, _: int) -> object:
    return t.year


def _position(_: datetime, index: int) -> object:
    return index


_BUCKETS: Mapping[str, Callable[[datetime, int], object]] = {
    "last": _position,
    "hourly": _hour,
    "daily": _day,
    "weekly": _week,
    "monthly": _month,
    "yearly": _year,
}


@dataclasses.dataclass(slots=True)
class _Rule:
    """One period rule while a group is evaluated: a count rule or a within rule."""

    bucket_of: Callable[[datetime, int], object]
    reason: str
    slots: int = UNLIMITED  # left to fill; -1: no count limit
    limit: datetime | None = None  # only snapshots after this count; None: all
    seen: set[object] = dataclasses.field(default_factory=set)


def _after(t: datetime, limit: datetime | None) -> bool:
    return limit is None or t > limit


def sort_newest_first(snapshots: Iterable[S]) -> list[S]:
    """Newest first; equal instants are ordered by id so the outcome never depends on input order."""
    by_id = sorted(snapshots, key=lambda sn: sn.id)
    for sn in by_id:
        _require_aware(sn.time, f"snapshot {sn.id} time")
    return sorted(by_id, key=lambda sn: sn.time, reverse=True)


def apply_policy(snapshots: Iterable[S], policy: Policy, *, now: datetime | None = None) -> list[Decision[S]]:
    """Decide, for one group of snapshots, which to keep; the result is ordered newest first.

    `now`, when given, only stops snapshots dated in the future from serving as the "latest"
    snapshot that the within-durations count back from (restic does the same with its clock).
    An empty policy keeps everything with the reason "policy is empty".

    A period is claimed by its newest snapshot, once: restic compares only with the previous
    snapshot's period, which keeps a day twice when local days go 10, 11, 10 (newest first).
    """
    ordered = sort_newest_first(snapshots)
    if policy.is_empty():
        return [Decision(sn, True, ("policy is empty",)) for sn in ordered]
    if not ordered:
        return []
    if now is not None:
        _require_aware(now, "now")
    past = [sn.time for sn in ordered if now is None or sn.time < now]
    latest = max(past) if past else None

    def cutoff(d: Duration) -> datetime | None:
        return None if latest is None else d.before(latest)

    rules = [
        _Rule(_BUCKETS[period], f"{period} snapshot", slots=policy.count(name))
        for name, period in _COUNT_RULES
        if policy.count(name)
    ] + [
        _Rule(_BUCKETS[period], f"{period} within {d}", limit=cutoff(d))
        for name, period in _WITHIN_RULES
        if (d := policy.duration(name)) is not None
    ]
    within_all = policy.duration("keep_within")
    within_all_limit = cutoff(within_all) if within_all is not None else None

    decisions: list[Decision[S]] = []
    oldest = len(ordered) - 1
    for index, sn in enumerate(ordered):
        reasons: list[str] = []
        for tag_set in policy.keep_tags:
            if matches_tag_set(sn.tags, tag_set):
                reasons.append("has no tags" if "" in tag_set else f"has tags {_tag_set_str(tag_set)}")
        if within_all is not None and _after(sn.time, within_all_limit):
            reasons.append(f"within {within_all}")
        for rule in rules:
            if rule.slots == 0 or not _after(sn.time, rule.limit):
                continue
            bucket = rule.bucket_of(sn.time, index)
            if bucket not in rule.seen:
                reasons.append(rule.reason)
            elif index == oldest:
                # Slots left over at the end go to the oldest snapshot: it extends the history most.
                reasons.append("oldest " + rule.reason)
            else:
                continue
            rule.seen.add(bucket)
            if rule.slots > 0:
                rule.slots -= 1
        decisions.append(Decision(sn, bool(reasons), tuple(reasons)))
    return decisions


# --------------------------------------------------------------------------------------------
# Grouping and filtering


@dataclasses.dataclass(frozen=True, slots=True)
class GroupKey:
    """The grouping values of a group; a field is None when snapshots are not grouped by it."""

    host: str | None = None
    paths: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None

    def __str__(self) -> str:
        parts = []
        if self.host is not None:
            parts.append(f"host {self.host}")
        if self.paths is not None:
            parts.append("paths [" + ", ".join(self.paths) + "]")
        if self.tags is not None:
            parts.append("tags [" + ", ".join(self.tags) + "]")
        return ", ".join(parts) or "all snapshots"

    def sort_key(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        return (self.host or "", self.paths or (), self.tags or ())


def parse_group_by(text: str) -> frozenset[str]:
    """Parse `--group-by host,paths`; restic's singular spellings are accepted, `''` means no grouping."""
    aliases = {"host": "host", "hosts": "host", "path": "paths", "paths": "paths", "tag": "tags", "tags": "tags"}
    fields = set()
    for raw in text.split(","):
        word = raw.strip()
        if not word:
            continue
        if word not in aliases:
            raise UsageError(f"unknown grouping option {word!r}: use host, paths and/or tags")
        fields.add(aliases[word])
    return frozenset(fields)


def group_snapshots(snapshots: Iterable[S], group_by: Set[str] = DEFAULT_GROUP_BY) -> dict[GroupKey, list[S]]:
    """Split snapshots into the groups the policy is applied to separately, so that one host's or one
    path set's backups can never push out another's. Paths and tags compare as sorted sets.

    Groups come out sorted by key; each group keeps the input order.
    """
    unknown = set(group_by) - GROUP_BY_FIELDS
    if unknown:
        raise UsageError(f"unknown grouping option(s) {sorted(unknown)}: use host, paths and/or tags")
    groups: dict[GroupKey, list[S]] = {}
    for sn in snapshots:
        key = GroupKey(
            host=sn.host if "host" in group_by else None,
            paths=tuple(sorted(set(sn.paths))) if "paths" in group_by else None,
            tags=tuple(sorted(set(sn.tags))) if "tags" in group_by else None,
        )
        groups.setdefault(key, []).append(sn)
    return {key: groups[key] for key in sorted(groups, key=GroupKey.sort_key)}


def filter_snapshots(
    snapshots: Iterable[S],
    *,
    hosts: Iterable[str] = (),
    tags: Iterable[Set[str]] = (),
    paths: Iterable[str] = (),
) -> list[S]:
    """Select snapshots as restic's `--host`, `--tag`, `--path` do; an empty criterion matches all.

    hosts: any of them. tags: any of the tag sets, each matched in full (`--tag a,b --tag c` is
    "(a and b) or c"). paths: the snapshot must contain every one of them.
    """
    host_set = frozenset(hosts)
    tag_sets = [frozenset(t) for t in tags]
    path_set = frozenset(paths)
    return [
        sn
        for sn in snapshots
        if (not host_set or sn.host in host_set)
        and (not tag_sets or any(matches_tag_set(sn.tags, t) for t in tag_sets))
        and path_set <= frozenset(sn.paths)
    ]


# --------------------------------------------------------------------------------------------
# The whole forget decision


@dataclasses.dataclass(frozen=True, slots=True)
class GroupPlan(Generic[S]):
    """The decisions for one group, newest first."""

    key: GroupKey
    decisions: tuple[Decision[S], ...]

    @property
    def keep(self) -> list[S]:
        return [d.snapshot for d in self.decisions if d.keep]

    @property
    def remove(self) -> list[S]:
        return [d.snapshot for d in self.decisions if not d.keep]


def plan_forget(
    snapshots: Iterable[S],
    policy: Policy,
    group_by: Set[str] = DEFAULT_GROUP_BY,
    *,
    now: datetime | None = None,
) -> list[GroupPlan[S]]:
    """Group the (already filtered) snapshots and apply the policy to each group, with restic's
    safety nets: an empty policy is a usage error, and a group in which nothing would be kept (a
    `--keep-tag` that matches nothing) aborts the whole run before anything is deleted.
    """
    if policy.is_empty():
        raise UsageError("no policy was specified, no snapshots will be removed")
    plans = []
    for key, members in group_snapshots(snapshots, group_by).items():
        plan = GroupPlan(key, tuple(apply_policy(members, policy, now=now)))
        if not plan.keep:
            raise BackupfsError(f"refusing to delete last snapshot of snapshot group {key}")
        plans.append(plan)
    return plans
