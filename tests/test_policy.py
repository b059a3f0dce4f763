"""Tests of the forget retention policy (backupfs.prune.policy), modelled on restic's documented semantics.

Golden files live in tests/golden/policy/; regenerate them with
`BACKUPFS_UPDATE_GOLDEN=1 python -m pytest tests/test_policy.py` and review the diff by hand:
several of them are also pinned by the explicit tests below (restic's documentation examples and
hand-derived expectations on the history).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from backupfs.errors import BackupfsError, UsageError
from backupfs.prune.policy import (
    DEFAULT_GROUP_BY,
    UNLIMITED,
    Decision,
    Duration,
    GroupKey,
    Policy,
    PolicySnapshot,
    apply_policy,
    filter_snapshots,
    group_snapshots,
    matches_tag_set,
    parse_duration,
    parse_group_by,
    parse_keep_count,
    parse_tag_set,
    plan_forget,
    sort_newest_first,
)

GOLDEN_DIR = Path(__file__).parent / "golden" / "policy"
UPDATE_GOLDEN = os.environ.get("BACKUPFS_UPDATE_GOLDEN") == "1"

CET = timezone(timedelta(hours=1))
CEST = timezone(timedelta(hours=2))
EDT = timezone(timedelta(hours=-4))


def snap(
    sid: str, when: str, *, host: str = "h", paths: Sequence[str] = ("/data",), tags: Sequence[str] = ()
) -> PolicySnapshot:
    """A snapshot from an ISO time; a time without offset is taken as UTC."""
    t = datetime.fromisoformat(when)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return PolicySnapshot(sid, t, host, tuple(paths), tuple(tags))


def kept(decisions: Sequence[Decision[PolicySnapshot]]) -> list[str]:
    return [d.snapshot.id for d in decisions if d.keep]


def reasons(decisions: Sequence[Decision[PolicySnapshot]]) -> dict[str, tuple[str, ...]]:
    return {d.snapshot.id: d.reasons for d in decisions if d.keep}


# ---------------------------------------------------------------------------------------------
# Hand-made histories


class _Lcg:
    """A tiny fixed pseudo-random sequence, so the history never changes with Python's `random`."""

    def __init__(self, seed: int) -> None:
        self.state = seed

    def next(self, n: int) -> int:
        self.state = (self.state * 1103515245 + 12345) % 2**31
        return (self.state >> 8) % n


def _laptop_times() -> list[tuple[datetime, tuple[str, ...]]]:
    """(time, tags) in creation order: 2¼ years of a laptop's backups with everything awkward."""
    rnd = _Lcg(20211220)
    out: list[tuple[datetime, tuple[str, ...]]] = []

    def add(t: datetime, *tags: str) -> None:
        out.append((t, tags))

    def evening(d: date, tz: timezone) -> datetime:
        return datetime(d.year, d.month, d.day, 18 + rnd.next(5), rnd.next(60), rnd.next(60), tzinfo=tz)

    # A. 2021-12-20 .. 2022-01-12: most evenings; crosses the year and ISO week 52 -> 1.
    d = date(2021, 12, 20)
    while d <= date(2022, 1, 12):
        if rnd.next(4):
            add(evening(d, CET))
        d += timedelta(days=1)
    # B. Sundays 2022-02-06 .. 2022-04-24 from cron (DST starts 2022-03-27), one manual backup.
    d = date(2022, 2, 6)
    while d <= date(2022, 4, 24):
        tz = CET if d < date(2022, 3, 27) else CEST
        add(datetime(d.year, d.month, d.day, 10, rnd.next(60), rnd.next(60), tzinfo=tz), "cron")
        d += timedelta(days=7)
    add(datetime(2022, 3, 15, 12, 0, 0, tzinfo=CET), "manual")
    # (May to September 2022: nothing at all, five months.)
    # C. Autumn 2022: every 9 to 13 days (DST ends 2022-10-30).
    d = date(2022, 10, 1)
    while d <= date(2022, 12, 31):
        add(evening(d, CEST if d < date(2022, 10, 30) else CET))
        d += timedelta(days=9 + rnd.next(5))
    # D. First half of 2023: two or three backups a month, and the night DST starts (no 02:xx).
    for month in range(1, 7):
        for _ in range(2 + rnd.next(2)):
            day = 1 + rnd.next(28)
            add(evening(date(2023, month, day), CET if month < 4 else CEST))
        if month == 3:
            add(datetime(2023, 3, 26, 1, 30, 0, tzinfo=CET))
            add(datetime(2023, 3, 26, 3, 30, 0, tzinfo=CEST))
    add(datetime(2023, 5, 2, 9, 0, 0, tzinfo=CEST), "manual", "pre-upgrade")
    # E. Travelling in July 2023 on US eastern time; one job still runs on home time, so local
    # days are not monotonic: 07-16 23:00 EDT is newer than 07-17 04:30 CEST, which is newer
    # than 07-16 19:00 EDT.
    add(datetime(2023, 7, 8, 7, 0, 0, tzinfo=CEST))
    for day in range(8, 16):
        add(datetime(2023, 7, day, 20 + rnd.next(3), rnd.next(60), 0, tzinfo=EDT))
    add(datetime(2023, 7, 16, 19, 0, 0, tzinfo=EDT))
    add(datetime(2023, 7, 17, 4, 30, 0, tzinfo=CEST))
    add(datetime(2023, 7, 16, 23, 0, 0, tzinfo=EDT))
    add(datetime(2023, 7, 18, 8, 0, 0, tzinfo=CEST))
    # F. Autumn 2023: weekly-ish; the DST fall-back night has 02:xx twice (02:10 CET is the newer);
    # a backup one second before and one second after midnight on New Year's Eve.
    d = date(2023, 9, 3)
    while d <= date(2023, 12, 24):
        add(evening(d, CEST if d < date(2023, 10, 29) else CET))
        d += timedelta(days=5 + rnd.next(6))
    add(datetime(2023, 10, 29, 2, 30, 0, tzinfo=CEST))
    add(datetime(2023, 10, 29, 2, 10, 0, tzinfo=CET))
    add(datetime(2023, 12, 31, 23, 59, 59, tzinfo=CET))
    add(datetime(2024, 1, 1, 0, 0, 1, tzinfo=CET))
    # G. 2024 until the end of March: most evenings, the leap day, then several backups a day.
    d = date(2024, 1, 2)
    while d <= date(2024, 2, 29):
        if rnd.next(3) or d == date(2024, 2, 29):
            add(evening(d, CET))
        d += timedelta(days=1)
    add(datetime(2024, 2, 14, 12, 0, 0, tzinfo=CET), "manual")
    d = date(2024, 3, 1)
    while d <= date(2024, 3, 30):
        for hour in sorted({8 + rnd.next(12) for _ in range(1 + rnd.next(3))}):
            add(datetime(d.year, d.month, d.day, hour, rnd.next(60), rnd.next(60), tzinfo=CET))
        if d == date(2024, 3, 10):
            add(datetime(2024, 3, 10, 21, 0, 0, tzinfo=CET))  # the same second as a copied one below
        if d == date(2024, 3, 20):
            add(datetime(2024, 3, 20, 22, 5, 0, tzinfo=CET))
            add(datetime(2024, 3, 20, 21, 50, 0, tzinfo=CET))  # made later, clock had jumped back
        d += timedelta(days=1)
    add(datetime(2024, 3, 31, 1, 30, 0, tzinfo=CET))  # DST starts at 02:00 that night
    add(datetime(2024, 3, 31, 3, 30, 0, tzinfo=CEST))
    add(datetime(2024, 3, 31, 21, 15, 0, tzinfo=CEST))  # the latest snapshot
    add(datetime(2024, 3, 10, 21, 0, 0, tzinfo=CET), "manual")  # copied in from another repository
    return out


def _short_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def laptop_history() -> list[PolicySnapshot]:
    """~190 snapshots of one host and path set, in creation order."""
    return [
        PolicySnapshot(_short_id(f"laptop/{n}"), t, "laptop", ("/home/alice",), tags)
        for n, (t, tags) in enumerate(_laptop_times())
    ]


def server_history() -> list[PolicySnapshot]:
    """A second host with two backup sets, for grouping: nightly /srv+/etc, weekly /etc alone."""
    out = []
    d = date(2024, 2, 1)
    while d <= date(2024, 3, 31):
        t = datetime(d.year, d.month, d.day, 3, 0, 0, tzinfo=UTC)
        out.append(PolicySnapshot(_short_id(f"server/{d}"), t, "server", ("/srv", "/etc")))
        if d.weekday() == 6:
            out.append(PolicySnapshot(_short_id(f"server-etc/{d}"), t + timedelta(hours=1), "server", ("/etc",)))
        d += timedelta(days=1)
    return out


def restic_doc_sundays() -> list[PolicySnapshot]:
    """The twelve Sunday backups of restic's forget documentation, with its ids."""
    ids = "0a1f9759 46cfe4d5 f6b1f037 eb430a5d 8cf1cb9a 5d33b116 b9553125 e1a7b58b 8f8018c0 59403279 dfee9fb4 e1ae2f40"
    first = datetime(2019, 9, 1, 11, 0, 0, tzinfo=UTC)
    return [
        PolicySnapshot(sid, first + timedelta(weeks=i), "mopped", ("/home/user/work",))
        for i, sid in enumerate(ids.split())
    ]


HISTORIES = {"laptop": laptop_history, "restic_doc_sundays": restic_doc_sundays}


def test_laptop_history_has_the_awkward_cases() -> None:
    """Guard the properties the golden files rely on, should anyone edit the history."""
    history = laptop_history()
    assert 150 <= len(history) <= 220
    assert len({sn.id for sn in history}) == len(history)
    months = {(sn.time.year, sn.time.month) for sn in history}
    assert not months & {(2022, m) for m in range(5, 10)}  # a five-month gap
    same_second = [sn for sn in history if sn.time == datetime(2024, 3, 10, 21, 0, 0, tzinfo=CET)]
    assert len(same_second) == 2
    # Creation order and id order disagree, so the tie-break is visibly by id.
    assert same_second[0].id > same_second[1].id
    backwards = [i for i in range(1, len(history)) if history[i].time < history[i - 1].time]
    assert backwards  # the clock jumped back at least once (besides the unordered phases)
    assert {sn.time.utcoffset() for sn in history} == {
        timedelta(hours=1),
        timedelta(hours=2),
        timedelta(hours=-4),
    }
    assert max(history, key=lambda sn: sn.time).time == datetime(2024, 3, 31, 21, 15, tzinfo=CEST)


# ---------------------------------------------------------------------------------------------
# Golden files


def d_(text: str) -> Duration:
    return parse_duration(text)


GOLDEN_POLICIES: dict[str, tuple[str, Policy]] = {
    # history, policy
    "doc_sundays_daily_4": ("restic_doc_sundays", Policy(keep_daily=4)),
    "doc_sundays_weekly_4": ("restic_doc_sundays", Policy(keep_weekly=4)),
    "doc_sundays_monthly_2": ("restic_doc_sundays", Policy(keep_monthly=2)),
    "doc_sundays_monthly_6": ("restic_doc_sundays", Policy(keep_monthly=6)),
    "doc_sundays_within_1m": ("restic_doc_sundays", Policy(keep_within=d_("1m"))),
    "last_10": ("laptop", Policy(keep_last=10)),
    "last_unlimited": ("laptop", Policy(keep_last=UNLIMITED)),
    "hourly_24": ("laptop", Policy(keep_hourly=24)),
    "hourly_unlimited": ("laptop", Policy(keep_hourly=UNLIMITED)),
    "daily_7": ("laptop", Policy(keep_daily=7)),
    "daily_30": ("laptop", Policy(keep_daily=30)),
    "daily_unlimited": ("laptop", Policy(keep_daily=UNLIMITED)),
    "weekly_8": ("laptop", Policy(keep_weekly=8)),
    "weekly_unlimited": ("laptop", Policy(keep_weekly=UNLIMITED)),
    "monthly_12": ("laptop", Policy(keep_monthly=12)),
    "monthly_unlimited": ("laptop", Policy(keep_monthly=UNLIMITED)),
    "yearly_5": ("laptop", Policy(keep_yearly=5)),
    "doc_combo_d7_w5_m12_y75": ("laptop", Policy(keep_daily=7, keep_weekly=5, keep_monthly=12, keep_yearly=75)),
    "last_3_daily_5": ("laptop", Policy(keep_last=3, keep_daily=5)),
    "within_3d": ("laptop", Policy(keep_within=d_("3d"))),
    "within_1m": ("laptop", Policy(keep_within=d_("1m"))),
    "within_1m14d": ("laptop", Policy(keep_within=d_("1m14d"))),
    "within_2y5m7d3h": ("laptop", Policy(keep_within=d_("2y5m7d3h"))),
    "within_hourly_2d": ("laptop", Policy(keep_within_hourly=d_("2d"))),
    "within_daily_10d": ("laptop", Policy(keep_within_daily=d_("10d"))),
    "within_weekly_2m": ("laptop", Policy(keep_within_weekly=d_("2m"))),
    "within_monthly_1y": ("laptop", Policy(keep_within_monthly=d_("1y"))),
    "within_yearly_9999y": ("laptop", Policy(keep_within_yearly=d_("9999y"))),
    "within_tiers_doc": (
        "laptop",
        Policy(
            keep_within_daily=d_("7d"),
            keep_within_weekly=d_("1m"),
            keep_within_monthly=d_("1y"),
            keep_within_yearly=d_("75y"),
        ),
    ),
    "tag_manual": ("laptop", Policy(keep_tags=(parse_tag_set("manual"),))),
    "tag_manual_and_preupgrade": ("laptop", Policy(keep_tags=(parse_tag_set("manual,pre-upgrade"),))),
    "tag_cron_or_manual": ("laptop", Policy(keep_tags=(parse_tag_set("cron"), parse_tag_set("manual")))),
    "mixed": (
        "laptop",
        Policy(
            keep_last=2,
            keep_hourly=6,
            keep_monthly=3,
            keep_within=d_("2d"),
            keep_tags=(parse_tag_set("manual"),),
        ),
    ),
}


def _golden_result(history_name: str, policy: Policy) -> dict[str, Any]:
    decisions = apply_policy(HISTORIES[history_name](), policy)
    return {
        "history": history_name,
        "policy": policy.describe(),
        "kept": [
            {"id": d.snapshot.id, "time": d.snapshot.time.isoformat(), "reasons": list(d.reasons)}
            for d in decisions
            if d.keep
        ],
        "removed": sum(not d.keep for d in decisions),
    }


def _to_json(value: Any, indent: int = 0) -> str:
    """JSON with one line per snapshot, so that a reviewer reads a golden file like a listing."""
    flat = json.dumps(value, ensure_ascii=False)
    if len(flat) + indent <= 110 or not isinstance(value, (list, dict)):
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k)}: {_to_json(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + _to_json(v, indent + 2) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def _check_golden(name: str, actual: Any) -> None:
    path = GOLDEN_DIR / f"{name}.json"
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_to_json(actual) + "\n")
    expected = json.loads(path.read_text())
    assert actual == expected, f"{path.name} differs; rerun with BACKUPFS_UPDATE_GOLDEN=1 and review the diff"


@pytest.mark.parametrize("name", sorted(GOLDEN_POLICIES))
def test_golden_policy(name: str) -> None:
    history_name, policy = GOLDEN_POLICIES[name]
    _check_golden(name, _golden_result(history_name, policy))


def test_golden_history() -> None:
    """The history itself, so that a reviewer can check the policy golden files against it."""
    history = [
        {"id": sn.id, "time": sn.time.isoformat(), "tags": list(sn.tags)} for sn in sort_newest_first(laptop_history())
    ]
    _check_golden("history_laptop", history)


def test_golden_plan_grouped() -> None:
    plans = plan_forget(
        laptop_history() + server_history(),
        Policy(keep_daily=7, keep_weekly=4, keep_monthly=6),
        DEFAULT_GROUP_BY,
    )
    actual = [
        {
            "group": str(plan.key),
            "kept": [
                f"{d.snapshot.id} {d.snapshot.time.isoformat()} {', '.join(d.reasons)}"
                for d in plan.decisions
                if d.keep
            ],
            "removed": len(plan.remove),
        }
        for plan in plans
    ]
    _check_golden("plan_grouped_d7_w4_m6", actual)


# ---------------------------------------------------------------------------------------------
# Hand-derived expectations (pinning the golden files to restic's documented behaviour)


def test_restic_doc_keep_daily_4_example() -> None:
    """doc/060_forget.rst: `forget --keep-daily 4` keeps the last four Sundays."""
    decisions = apply_policy(restic_doc_sundays(), Policy(keep_daily=4))
    assert kept(decisions) == ["e1ae2f40", "dfee9fb4", "59403279", "8f8018c0"]
    assert set(reasons(decisions).values()) == {("daily snapshot",)}
    assert sum(not d.keep for d in decisions) == 8


def test_restic_doc_sundays_monthly() -> None:
    """Four months have a Sunday backup (Sep..Nov 2019); the newest in each is kept."""
    two = apply_policy(restic_doc_sundays(), Policy(keep_monthly=2))
    assert kept(two) == ["e1ae2f40", "8f8018c0"]  # 2019-11-17, 2019-10-27
    # Six slots for three months: Sep's last Sunday, then the oldest snapshot with the slots left.
    six = apply_policy(restic_doc_sundays(), Policy(keep_monthly=6))
    assert reasons(six) == {
        "e1ae2f40": ("monthly snapshot",),
        "8f8018c0": ("monthly snapshot",),
        "8cf1cb9a": ("monthly snapshot",),  # 2019-09-29
        "0a1f9759": ("oldest monthly snapshot",),  # 2019-09-01
    }


def test_restic_doc_hundred_years_of_dailies() -> None:
    """doc/060_forget.rst: daily backups for 100 years and --keep-daily 7 --keep-weekly 5
    --keep-monthly 12 --keep-yearly 75 keep 7 dailies, 4 more weeklies, 12 or 11 monthlies and
    75 or 74 yearlies."""
    first = datetime(1924, 1, 1, 12, 0, tzinfo=UTC)
    history = [PolicySnapshot(f"{i:06d}", first + timedelta(days=i)) for i in range(36525)]
    decisions = apply_policy(history, Policy(keep_daily=7, keep_weekly=5, keep_monthly=12, keep_yearly=75))
    by_rule = {
        rule: [d for d in decisions if f"{rule} snapshot" in d.reasons]
        for rule in ("daily", "weekly", "monthly", "yearly")
    }
    assert [len(v) for v in by_rule.values()] == [7, 5, 12, 75]
    only_weekly = [d for d in by_rule["weekly"] if "daily snapshot" not in d.reasons]
    assert len(only_weekly) == 4
    new_monthly = [d for d in by_rule["monthly"] if d.reasons[0] == "monthly snapshot"]
    new_yearly = [d for d in by_rule["yearly"] if d.reasons == ("yearly snapshot",)]
    assert len(new_monthly) in (11, 12)
    assert len(new_yearly) in (74, 75)
    assert len(kept(decisions)) == 7 + 4 + len(new_monthly) + len(new_yearly)
    assert not any(r.startswith("oldest") for d in decisions for r in d.reasons)
    # The kept yearlies are the 31 Decembers of the newest 75 years.
    last_days = sorted(d.snapshot.time.date() for d in by_rule["yearly"])
    assert last_days[0] == date(1949, 12, 31)
    assert all((t.month, t.day) == (12, 31) for t in last_days[:-1])


def _oracle_period_keep(history: Sequence[PolicySnapshot], bucket: Any, n: int) -> list[str]:
    """An independent statement of --keep-<period> n: the newest snapshot of each of the n
    periods whose newest snapshot is newest, plus the oldest snapshot if slots are left."""
    newest_of: dict[Any, PolicySnapshot] = {}
    for sn in history:
        b = bucket(sn.time)
        cur = newest_of.get(b)
        if cur is None or (sn.time, _neg(sn.id)) > (cur.time, _neg(cur.id)):
            newest_of[b] = sn
    ranked = sorted(newest_of.values(), key=lambda sn: (sn.time, _neg(sn.id)), reverse=True)
    chosen = ranked if n == UNLIMITED else ranked[:n]
    ids = [sn.id for sn in chosen]
    oldest = min(history, key=lambda sn: (sn.time, _neg(sn.id)))
    if (n == UNLIMITED or len(chosen) < n) and oldest.id not in ids:
        ids.append(oldest.id)
    return ids


def _neg(sid: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in sid)  # smaller id counts as "newer" among equal times


PERIODS = {
    "keep_hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "keep_daily": lambda t: t.date(),
    "keep_weekly": lambda t: t.isocalendar()[:2],
    "keep_monthly": lambda t: (t.year, t.month),
    "keep_yearly": lambda t: t.year,
}


@pytest.mark.parametrize("n", [1, 3, 12, 40, 500, UNLIMITED])
@pytest.mark.parametrize("rule", sorted(PERIODS))
def test_period_rules_match_oracle(rule: str, n: int) -> None:
    history = laptop_history()
    changes: dict[str, Any] = {rule: n}
    decisions = apply_policy(history, Policy(**changes))
    assert kept(decisions) == _oracle_period_keep(history, PERIODS[rule], n)


def test_laptop_monthly_by_hand() -> None:
    """Read off the history: the last backup of each of the 6 newest months that have one."""
    decisions = apply_policy(laptop_history(), Policy(keep_monthly=6))
    times = [d.snapshot.time.isoformat() for d in decisions if d.keep]
    assert times[0] == "2024-03-31T21:15:00+02:00"  # March 2024: the latest snapshot
    assert times[1].startswith("2024-02-29T")  # February 2024: the leap day
    assert times[2].startswith("2024-01-")  # January 2024
    assert times[3] == "2023-12-31T23:59:59+01:00"  # December: one second before midnight
    assert times[4].startswith("2023-11-")
    assert times[5].startswith("2023-10-")
    assert len(times) == 6


def test_laptop_weekly_skips_empty_weeks_by_hand() -> None:
    """Sep 2022 had no backup: the 2022 weeklies jump from autumn straight to April."""
    decisions = apply_policy(laptop_history(), Policy(keep_weekly=UNLIMITED))
    times = [d.snapshot.time for d in decisions if d.keep]
    gap = [(a, b) for a, b in itertools.pairwise(times) if a - b > timedelta(days=100)]
    assert len(gap) == 1
    newer, older = gap[0]
    assert (newer.year, newer.month) == (2022, 10)
    assert (older.year, older.month) == (2022, 4)


def test_laptop_hourly_dst_fall_back_by_hand() -> None:
    """On 2023-10-29 local 02:xx happened twice; 02:10+01:00 is newer than 02:30+02:00 and both
    are in the local hour 02, so only 02:10 is the hourly snapshot."""
    decisions = apply_policy(laptop_history(), Policy(keep_hourly=UNLIMITED))
    hourly = {d.snapshot.time.isoformat() for d in decisions if d.keep}
    assert "2023-10-29T02:10:00+01:00" in hourly
    assert "2023-10-29T02:30:00+02:00" not in hourly


def test_laptop_within_1m_clamps_to_leap_day_by_hand() -> None:
    """Latest 2024-03-31 21:15+02:00 minus one month is 2024-02-29 21:15+02:00 (19:15Z)."""
    decisions = apply_policy(laptop_history(), Policy(keep_within=d_("1m")))
    kept_times = [d.snapshot.time for d in decisions if d.keep]
    limit = datetime(2024, 2, 29, 19, 15, tzinfo=UTC)
    assert all(t > limit for t in kept_times)
    assert all(t <= limit for t in (d.snapshot.time for d in decisions if not d.keep))
    assert min(kept_times).date() == date(2024, 2, 29)  # the leap-day evening backup is within


# ---------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2y5m7d3h", Duration(2, 5, 7, 3)),
        ("1y1d1m", Duration(years=1, months=1, days=1)),  # any order, as restic
        ("7d", Duration(days=7)),
        ("13d23h", Duration(days=13, hours=23)),
        (" 3h ", Duration(hours=3)),
        ("0d", Duration()),
        ("9999y", Duration(years=9999)),
        ("007m", Duration(months=7)),
    ],
)
def test_parse_duration(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("5", "number 5 has no unit"),
        ("1w", "weeks are written as 7d"),
        ("3x", "unknown unit 'x' after 3"),
        ("-1d", "negative"),
        ("1d-2h", "negative"),
        ("1d2d", "unit 'd' given twice"),
        ("d", "expected a number at 'd'"),
        ("1.5d", "unknown unit '.'"),
        ("1D", "unknown unit 'D'"),
        ("1y 2m", "expected a number at ' 2m'"),
        ("\u0661d", "expected a number"),  # an Arabic-Indic digit is not a digit here
        ("1dd", "expected a number at 'd'"),
    ],
)
def test_parse_duration_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match="duration") as info:
        parse_duration(text)
    assert message in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("text", ["2y5m7d3h", "1m", "7d", "3h", "1y2h"])
def test_duration_str_round_trips(text: str) -> None:
    assert str(parse_duration(text)) == text


def test_duration_zero_and_negative() -> None:
    assert Duration().is_zero()
    assert str(Duration()) == "0h"
    assert not Duration(hours=1).is_zero()
    with pytest.raises(ValueError, match="negative"):
        Duration(days=-1)


BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("start", "span", "expected"),
    [
        (datetime(2024, 3, 31, 21, 15, tzinfo=CEST), "1m", datetime(2024, 2, 29, 21, 15, tzinfo=CEST)),
        (datetime(2023, 3, 31, 12, 0, tzinfo=UTC), "1m", datetime(2023, 2, 28, 12, 0, tzinfo=UTC)),
        (datetime(2024, 2, 29, 12, 0, tzinfo=UTC), "1y", datetime(2023, 2, 28, 12, 0, tzinfo=UTC)),
        (datetime(2024, 1, 15, 12, 0, tzinfo=UTC), "2m", datetime(2023, 11, 15, 12, 0, tzinfo=UTC)),
        (datetime(2024, 1, 15, 12, 0, tzinfo=UTC), "1y13m", datetime(2021, 12, 15, 12, 0, tzinfo=UTC)),
        (datetime(2024, 1, 1, 0, 30, tzinfo=CET), "1h", datetime(2023, 12, 31, 23, 30, tzinfo=CET)),
        (datetime(2024, 3, 1, 6, 0, tzinfo=UTC), "1d7h", datetime(2024, 2, 28, 23, 0, tzinfo=UTC)),
        # A calendar day across the DST change is 23 hours, as restic's AddDate in a zone...
        (datetime(2023, 3, 26, 12, 0, tzinfo=BERLIN), "1d", datetime(2023, 3, 25, 12, 0, tzinfo=BERLIN)),
        # ... while hours are elapsed time: 24h before 12:00 CEST is 11:00 CET.
        (datetime(2023, 3, 26, 12, 0, tzinfo=BERLIN), "24h", datetime(2023, 3, 25, 11, 0, tzinfo=BERLIN)),
        (datetime(2024, 3, 31, 21, 15, tzinfo=CEST), "2y5m7d3h", datetime(2021, 10, 24, 18, 15, tzinfo=CEST)),
    ],
)
def test_duration_before(start: datetime, span: str, expected: datetime) -> None:
    assert parse_duration(span).before(start) == expected


@pytest.mark.parametrize("span", ["9999y", "2024y3m", "800000d"])
def test_duration_before_year_one_is_unbounded(span: str) -> None:
    assert parse_duration(span).before(datetime(2024, 3, 1, tzinfo=UTC)) is None


def test_duration_before_requires_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Duration(days=1).before(datetime(2024, 1, 1))


# ---------------------------------------------------------------------------------------------
# Policy values


@pytest.mark.parametrize(
    ("text", "expected"), [("7", 7), ("0", 0), (" 12 ", 12), ("unlimited", UNLIMITED), ("-1", UNLIMITED)]
)
def test_parse_keep_count(text: str, expected: int) -> None:
    assert parse_keep_count(text) == expected


@pytest.mark.parametrize(("text", "message"), [("-2", "negative"), ("x", "expected a number"), ("", "expected")])
def test_parse_keep_count_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_keep_count(text)


def test_policy_rejects_negative_counts() -> None:
    with pytest.raises(UsageError, match="--keep-daily -2"):
        Policy(keep_daily=-2)


@pytest.mark.parametrize(
    ("policy", "empty"),
    [
        (Policy(), True),
        (Policy(keep_daily=0, keep_last=None), True),
        (Policy(keep_within=Duration(), keep_within_daily=parse_duration("0d")), True),
        (Policy(keep_last=1), False),
        (Policy(keep_yearly=UNLIMITED), False),
        (Policy(keep_within=parse_duration("1h")), False),
        (Policy(keep_within_weekly=parse_duration("1m")), False),
        (Policy(keep_tags=(parse_tag_set("a"),)), False),
        (Policy(keep_tags=(frozenset(),)), False),
    ],
)
def test_policy_is_empty(policy: Policy, empty: bool) -> None:
    assert policy.is_empty() is empty


@pytest.mark.parametrize(
    ("policy", "text"),
    [
        (Policy(), "keep everything (empty policy)"),
        (Policy(keep_daily=7, keep_weekly=UNLIMITED), "keep 7 daily, all weekly snapshots"),
        (Policy(keep_last=3), "keep 3 latest snapshots"),
        (
            Policy(keep_hourly=2, keep_within_daily=d_("7d"), keep_within_yearly=d_("75y")),
            "keep 2 hourly snapshots, daily snapshots within 7d, yearly snapshots within 75y",
        ),
        (
            Policy(keep_tags=(parse_tag_set("b,a"), parse_tag_set("")), keep_within=d_("2y5m")),
            "keep all snapshots with tags [a, b] or [''] and all snapshots within 2y5m of the newest",
        ),
    ],
)
def test_policy_describe(policy: Policy, text: str) -> None:
    assert policy.describe() == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a", {"a"}), ("a,b", {"a", "b"}), (" a , b ", {"a", "b"}), ("", {""}), ("a,a", {"a"})],
)
def test_parse_tag_set(text: str, expected: set[str]) -> None:
    assert parse_tag_set(text) == expected


@pytest.mark.parametrize(
    ("have", "tag_set", "matches"),
    [
        ((), frozenset(), True),
        (("a",), frozenset(), True),
        (("a", "b"), {"a"}, True),
        (("a", "b"), {"a", "b"}, True),
        (("a",), {"a", "b"}, False),
        ((), {"a"}, False),
        ((), {""}, True),  # '' selects untagged snapshots
        (("a",), {""}, False),
        ((), {"", "a"}, False),
        (("a",), {"", "a"}, False),
    ],
)
def test_matches_tag_set(have: tuple[str, ...], tag_set: set[str], matches: bool) -> None:
    assert matches_tag_set(have, tag_set) is matches


# ---------------------------------------------------------------------------------------------
# apply_policy


def test_empty_policy_keeps_everything() -> None:
    history = [snap("a", "2024-01-01T10:00"), snap("b", "2024-01-02T10:00")]
    decisions = apply_policy(history, Policy())
    assert kept(decisions) == ["b", "a"]
    assert all(d.reasons == ("policy is empty",) for d in decisions)


def test_no_snapshots() -> None:
    assert apply_policy([], Policy(keep_last=3)) == []


def test_result_is_newest_first_and_complete() -> None:
    history = laptop_history()
    decisions = apply_policy(history, Policy(keep_monthly=3))
    assert sorted(d.snapshot.id for d in decisions) == sorted(sn.id for sn in history)
    times = [d.snapshot.time for d in decisions]
    assert times == sorted(times, reverse=True)
    assert all(d.keep == bool(d.reasons) for d in decisions)


def test_keep_last() -> None:
    history = [snap(f"s{i}", f"2024-01-0{i}T10:00") for i in range(1, 6)]
    assert kept(apply_policy(history, Policy(keep_last=2))) == ["s5", "s4"]
    every = apply_policy(history, Policy(keep_last=UNLIMITED))
    assert kept(every) == ["s5", "s4", "s3", "s2", "s1"]
    assert set(reasons(every).values()) == {("last snapshot",)}
    # More slots than snapshots: everything, no "oldest" (the last rule gives each its own slot).
    assert set(reasons(apply_policy(history, Policy(keep_last=9))).values()) == {("last snapshot",)}


@pytest.mark.parametrize("order", [1, -1])
def test_equal_times_are_ordered_by_id(order: int) -> None:
    history = [
        snap("bbbb", "2024-01-01T10:00:00"),
        snap("aaaa", "2024-01-01T10:00:00"),
        snap("cccc", "2024-01-01T11:00:00+01:00"),  # the same instant, another offset
        snap("zzzz", "2023-12-31T10:00:00"),
    ][::order]
    assert [sn.id for sn in sort_newest_first(history)] == ["aaaa", "bbbb", "cccc", "zzzz"]
    assert kept(apply_policy(history, Policy(keep_last=1))) == ["aaaa"]
    assert kept(apply_policy(history, Policy(keep_daily=1))) == ["aaaa"]


def test_creation_order_does_not_matter() -> None:
    """A clock that jumped back only changes the times; the input order is irrelevant."""
    history = laptop_history()
    policy = Policy(keep_daily=10, keep_hourly=10, keep_last=3)
    assert apply_policy(history, policy) == apply_policy(reversed(history), policy)


def test_periods_without_snapshots_use_no_slot() -> None:
    history = [snap("jan", "2023-01-15T10:00"), snap("jun", "2023-06-15T10:00"), snap("dec", "2023-12-15T10:00")]
    assert kept(apply_policy(history, Policy(keep_monthly=3))) == ["dec", "jun", "jan"]
    assert kept(apply_policy(history, Policy(keep_monthly=2))) == ["dec", "jun"]


def test_newest_of_each_period_is_kept() -> None:
    history = [
        snap("d1-early", "2024-01-01T08:00"),
        snap("d1-late", "2024-01-01T20:00"),
        snap("d2-early", "2024-01-02T08:00"),
        snap("d2-late", "2024-01-02T20:00"),
        snap("d3", "2024-01-03T08:00"),
    ]
    assert kept(apply_policy(history, Policy(keep_daily=2))) == ["d3", "d2-late"]


def test_oldest_snapshot_takes_leftover_slots() -> None:
    """restic: if there are not enough snapshots for a count, the oldest is kept additionally."""
    history = [
        snap("d1-early", "2024-01-01T08:00"),
        snap("d1-late", "2024-01-01T20:00"),
        snap("d2", "2024-01-02T08:00"),
    ]
    decisions = apply_policy(history, Policy(keep_daily=5, keep_weekly=1))
    assert reasons(decisions) == {
        "d2": ("daily snapshot", "weekly snapshot"),
        "d1-late": ("daily snapshot",),
        "d1-early": ("oldest daily snapshot",),
    }
    # Exactly enough periods: the slots are used up before the oldest is reached.
    assert kept(apply_policy(history, Policy(keep_daily=2))) == ["d2", "d1-late"]
    # Unlimited always has a slot left.
    unlimited = apply_policy(history, Policy(keep_daily=UNLIMITED))
    assert reasons(unlimited)["d1-early"] == ("oldest daily snapshot",)


def test_oldest_rule_for_within_periods() -> None:
    history = [snap("a", "2024-01-01T08:00"), snap("b", "2024-01-01T09:00"), snap("c", "2024-01-02T09:00")]
    decisions = apply_policy(history, Policy(keep_within_daily=d_("7d")))
    assert reasons(decisions) == {
        "c": ("daily within 7d",),
        "b": ("daily within 7d",),
        "a": ("oldest daily within 7d",),
    }
    # The oldest is outside the duration (08:00 is not after 09:00 minus 1d1h): nothing extra.
    assert kept(apply_policy(history, Policy(keep_within_daily=d_("1d1h")))) == ["c", "b"]


def test_weeks_start_on_monday() -> None:
    history = [
        snap("sun", "2024-03-10T23:00"),  # ISO week 10
        snap("mon", "2024-03-11T01:00"),  # ISO week 11
        snap("sat", "2024-03-09T12:00"),  # week 10, older than sunday
    ]
    assert kept(apply_policy(history, Policy(keep_weekly=2))) == ["mon", "sun"]


def test_iso_week_year() -> None:
    """2021-01-03 (Sunday) belongs to ISO week 2020-W53, together with 2020-12-31."""
    history = [snap("jan3", "2021-01-03T10:00"), snap("dec31", "2020-12-31T10:00"), snap("dec27", "2020-12-27T10:00")]
    assert kept(apply_policy(history, Policy(keep_weekly=2))) == ["jan3", "dec27"]


def test_buckets_use_each_snapshots_own_local_time() -> None:
    # 23:30 in London and 00:10 the next day in Paris: different days, though only 40 minutes apart.
    history = [snap("london", "2024-01-01T23:30:00+00:00"), snap("paris", "2024-01-02T00:10:00+01:00")]
    assert kept(apply_policy(history, Policy(keep_daily=1))) == ["london"]
    assert kept(apply_policy(history, Policy(keep_daily=2))) == ["london", "paris"]
    # The same instants stored in UTC fall on one day.
    as_utc = [dataclasses.replace(sn, time=sn.time.astimezone(UTC)) for sn in history]
    assert kept(apply_policy(as_utc, Policy(keep_daily=2))) == ["london", "paris"]
    assert reasons(apply_policy(as_utc, Policy(keep_daily=2)))["paris"] == ("oldest daily snapshot",)


def test_a_period_seen_again_later_is_not_kept_twice() -> None:
    """Local days out of order (a travelling clock): each day still keeps only its newest snapshot.
    restic's implementation compares with the previous snapshot's day only and would keep `home-10`
    as a second snapshot of 07-10."""
    history = [
        snap("nyc-10", "2023-07-10T23:30:00-04:00"),  # 07-11 03:30Z, newest, local day 07-10
        snap("home-11", "2023-07-11T05:00:00+02:00"),  # 07-11 03:00Z, local day 07-11
        snap("home-10", "2023-07-10T20:00:00+02:00"),  # 07-10 18:00Z, local day 07-10 again
        snap("home-09", "2023-07-09T20:00:00+02:00"),
    ]
    assert kept(apply_policy(history, Policy(keep_daily=5))) == ["nyc-10", "home-11", "home-09"]


def test_keep_within_is_relative_to_the_latest_snapshot() -> None:
    """An abandoned backup set keeps its last days even when forget runs years later."""
    history = [snap(f"s{i:02d}", f"2010-05-{i:02d}T12:00") for i in range(1, 21)]
    decisions = apply_policy(history, Policy(keep_within=d_("3d")), now=datetime(2024, 1, 1, tzinfo=UTC))
    # Latest 2010-05-20 12:00, limit 2010-05-17 12:00 exclusive.
    assert kept(decisions) == ["s20", "s19", "s18"]
    assert set(reasons(decisions).values()) == {("within 3d",)}


def test_keep_within_boundary_is_exclusive() -> None:
    history = [snap("new", "2024-01-10T12:00"), snap("edge", "2024-01-09T12:00"), snap("in", "2024-01-09T12:00:01")]
    assert kept(apply_policy(history, Policy(keep_within=d_("1d")))) == ["new", "in"]
    assert kept(apply_policy(history, Policy(keep_within=d_("1d1h")))) == ["new", "in", "edge"]


def test_keep_within_hours_only() -> None:
    history = [snap(f"h{i}", f"2024-01-10T{i:02d}:30") for i in range(24)]
    assert kept(apply_policy(history, Policy(keep_within=d_("3h")))) == ["h23", "h22", "h21"]


def test_future_snapshots_do_not_move_the_within_reference() -> None:
    history = [
        snap("future", "2030-01-01T00:00"),  # a badly set clock
        snap("today", "2024-01-10T12:00"),
        snap("yesterday", "2024-01-09T13:00"),
        snap("old", "2024-01-01T12:00"),
    ]
    now = datetime(2024, 1, 10, 18, 0, tzinfo=UTC)
    decisions = apply_policy(history, Policy(keep_within=d_("2d")), now=now)
    assert kept(decisions) == ["future", "today", "yesterday"]  # the future one is never removed
    # Without `now` the future snapshot is the latest, and everything else falls outside.
    assert kept(apply_policy(history, Policy(keep_within=d_("2d")))) == ["future"]
    # Within-period rules count from the same reference.
    daily = apply_policy(history, Policy(keep_within_daily=d_("2d")), now=now)
    assert kept(daily) == ["future", "today", "yesterday"]


def test_all_snapshots_in_the_future_are_all_within() -> None:
    history = [snap("a", "2030-01-01T00:00"), snap("b", "2029-01-01T00:00")]
    now = datetime(2024, 1, 1, tzinfo=UTC)
    assert kept(apply_policy(history, Policy(keep_within=d_("1d")), now=now)) == ["a", "b"]


def test_keep_within_period_rules() -> None:
    history = [
        snap("mar31", "2024-03-31T10:00"),
        snap("mar30b", "2024-03-30T18:00"),
        snap("mar30a", "2024-03-30T08:00"),
        snap("mar20", "2024-03-20T10:00"),
        snap("feb10", "2024-02-10T10:00"),
        snap("jan05", "2024-01-05T10:00"),
        snap("dec2023", "2023-12-05T10:00"),
    ]
    decisions = apply_policy(
        history, Policy(keep_within_daily=d_("2d"), keep_within_weekly=d_("1m"), keep_within_monthly=d_("3m"))
    )
    assert reasons(decisions) == {
        "mar31": ("daily within 2d", "weekly within 1m", "monthly within 3m"),
        "mar30b": ("daily within 2d",),  # Saturday, the same ISO week as Sunday the 31st
        "mar20": ("weekly within 1m",),  # 1m before 31 March is 29 February: 10 Feb is out
        "feb10": ("monthly within 3m",),
        "jan05": ("monthly within 3m",),
    }


def test_unlimited_counts() -> None:
    history = laptop_history()
    every_day = {sn.time.date() for sn in history}
    decisions = apply_policy(history, Policy(keep_daily=UNLIMITED))
    daily = [d for d in decisions if "daily snapshot" in d.reasons]
    assert len(daily) == len(every_day)
    assert len(kept(apply_policy(history, Policy(keep_last=UNLIMITED)))) == len(history)


def test_keep_tags() -> None:
    history = [
        snap("ab", "2024-01-05T10:00", tags=("a", "b")),
        snap("a", "2024-01-04T10:00", tags=("a",)),
        snap("b", "2024-01-03T10:00", tags=("b",)),
        snap("c", "2024-01-02T10:00", tags=("c",)),
        snap("none", "2024-01-01T10:00"),
    ]
    assert kept(apply_policy(history, Policy(keep_tags=(parse_tag_set("a"),)))) == ["ab", "a"]
    # --keep-tag a,b: both tags needed.
    assert kept(apply_policy(history, Policy(keep_tags=(parse_tag_set("a,b"),)))) == ["ab"]
    # --keep-tag a --keep-tag c: either.
    both = apply_policy(history, Policy(keep_tags=(parse_tag_set("a"), parse_tag_set("c"))))
    assert kept(both) == ["ab", "a", "c"]
    # --keep-tag '': untagged only.
    assert reasons(apply_policy(history, Policy(keep_tags=(parse_tag_set(""),)))) == {"none": ("has no tags",)}
    # Several matching sets are all listed; tags are not counted, so they add to other rules.
    decisions = apply_policy(history, Policy(keep_tags=(parse_tag_set("b"), parse_tag_set("a,b")), keep_last=1))
    assert reasons(decisions) == {"ab": ("has tags [b]", "has tags [a, b]", "last snapshot"), "b": ("has tags [b]",)}


def test_all_reasons_are_listed_in_a_fixed_order() -> None:
    history = [snap("new", "2024-01-10T12:00", tags=("x",)), snap("old", "2023-01-10T12:00")]
    policy = Policy(
        keep_last=1,
        keep_hourly=1,
        keep_daily=1,
        keep_weekly=1,
        keep_monthly=1,
        keep_yearly=1,
        keep_within=d_("1d"),
        keep_within_hourly=d_("1d"),
        keep_within_daily=d_("1d"),
        keep_within_weekly=d_("1d"),
        keep_within_monthly=d_("1d"),
        keep_within_yearly=d_("1d"),
        keep_tags=(parse_tag_set("x"),),
    )
    decisions = apply_policy(history, policy)
    assert reasons(decisions) == {
        "new": (
            "has tags [x]",
            "within 1d",
            "last snapshot",
            "hourly snapshot",
            "daily snapshot",
            "weekly snapshot",
            "monthly snapshot",
            "yearly snapshot",
            "hourly within 1d",
            "daily within 1d",
            "weekly within 1d",
            "monthly within 1d",
            "yearly within 1d",
        )
    }
    assert decisions[1] == Decision(history[1], False, ())


def test_requires_timezone_aware_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        PolicySnapshot("x", datetime(2024, 1, 1))

    @dataclasses.dataclass
    class Loose:
        id: str
        time: datetime
        host: str = "h"
        paths: Sequence[str] = ()
        tags: Sequence[str] = ()

    with pytest.raises(ValueError, match="snapshot x time"):
        apply_policy([Loose("x", datetime(2024, 1, 1))], Policy(keep_last=1))
    with pytest.raises(ValueError, match="now"):
        apply_policy([Loose("x", datetime(2024, 1, 1, tzinfo=UTC))], Policy(keep_last=1), now=datetime(2024, 1, 1))


def test_accepts_any_snapshot_like_object() -> None:
    @dataclasses.dataclass
    class RepoSnapshot:
        id: str
        time: datetime
        host: str
        paths: list[str]
        tags: list[str]
        tree: bytes = b""

    a = RepoSnapshot("a", datetime(2024, 1, 1, tzinfo=UTC), "h", ["/x"], [])
    b = RepoSnapshot("b", datetime(2024, 1, 2, tzinfo=UTC), "h", ["/x"], ["t"])
    decisions = apply_policy([a, b], Policy(keep_last=1))
    assert decisions[0].snapshot is b
    assert decisions[1] == Decision(a, False, ())
    assert filter_snapshots([a, b], tags=[{"t"}]) == [b]
    assert group_snapshots([a, b]) == {GroupKey("h", ("/x",), None): [a, b]}


# ---------------------------------------------------------------------------------------------
# Grouping


def _mixed() -> list[PolicySnapshot]:
    return [
        snap("1", "2024-01-01T10:00", host="a", paths=("/x", "/y"), tags=("t",)),
        snap("2", "2024-01-02T10:00", host="a", paths=("/y", "/x")),
        snap("3", "2024-01-03T10:00", host="b", paths=("/x", "/y"), tags=("t",)),
        snap("4", "2024-01-04T10:00", host="a", paths=("/x",), tags=("t",)),
    ]


def _ids(groups: dict[GroupKey, list[PolicySnapshot]]) -> dict[str, list[str]]:
    return {str(k): [sn.id for sn in v] for k, v in groups.items()}


def test_group_by_default_host_and_paths() -> None:
    groups = group_snapshots(_mixed())
    assert _ids(groups) == {
        "host a, paths [/x]": ["4"],
        "host a, paths [/x, /y]": ["1", "2"],
        "host b, paths [/x, /y]": ["3"],
    }
    assert GroupKey("a", ("/x", "/y")) in groups  # hashable, paths as a sorted tuple


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        (set(), {"all snapshots": ["1", "2", "3", "4"]}),
        ({"host"}, {"host a": ["1", "2", "4"], "host b": ["3"]}),
        ({"tags"}, {"tags []": ["2"], "tags [t]": ["1", "3", "4"]}),
        (
            {"paths", "tags"},
            {"paths [/x], tags [t]": ["4"], "paths [/x, /y], tags []": ["2"], "paths [/x, /y], tags [t]": ["1", "3"]},
        ),
        (
            {"host", "paths", "tags"},
            {
                "host a, paths [/x], tags [t]": ["4"],
                "host a, paths [/x, /y], tags []": ["2"],
                "host a, paths [/x, /y], tags [t]": ["1"],
                "host b, paths [/x, /y], tags [t]": ["3"],
            },
        ),
    ],
)
def test_group_by(group_by: set[str], expected: dict[str, list[str]]) -> None:
    assert _ids(group_snapshots(_mixed(), group_by)) == expected


def test_group_snapshots_rejects_unknown_fields() -> None:
    with pytest.raises(UsageError, match="hostname"):
        group_snapshots(_mixed(), {"hostname"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host,paths", {"host", "paths"}),
        ("host,path", {"host", "paths"}),
        ("hosts,tag", {"host", "tags"}),
        (" tags ", {"tags"}),
        ("", set()),
    ],
)
def test_parse_group_by(text: str, expected: set[str]) -> None:
    assert parse_group_by(text) == expected


def test_parse_group_by_error() -> None:
    with pytest.raises(UsageError, match="unknown grouping option 'hostname'"):
        parse_group_by("hostname,paths")


# ---------------------------------------------------------------------------------------------
# Filtering


def _ids_of(snapshots: Sequence[PolicySnapshot]) -> list[str]:
    return [sn.id for sn in snapshots]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ["foo", "bar", "foobar", "none", "other-host"]),
        ({"hosts": ["h"]}, ["foo", "bar", "foobar", "none"]),
        ({"hosts": ["h", "g"]}, ["foo", "bar", "foobar", "none", "other-host"]),
        # restic docs: `--tag foo` ...
        ({"tags": [parse_tag_set("foo")]}, ["foo", "foobar"]),
        # ... `--tag foo --tag bar`: either tag ...
        ({"tags": [parse_tag_set("foo"), parse_tag_set("bar")]}, ["foo", "bar", "foobar"]),
        # ... `--tag foo,bar`: both tags ...
        ({"tags": [parse_tag_set("foo,bar")]}, ["foobar"]),
        # ... `--tag ''`: untagged only.
        ({"tags": [parse_tag_set("")]}, ["none", "other-host"]),
        ({"paths": ["/a"]}, ["foo", "bar", "foobar", "none"]),
        ({"paths": ["/a", "/b"]}, ["foobar"]),  # all given paths must be in the snapshot
        ({"paths": ["/c"]}, []),
        ({"hosts": ["h"], "tags": [parse_tag_set("")], "paths": ["/a"]}, ["none"]),
    ],
)
def test_filter_snapshots(kwargs: dict[str, Any], expected: list[str]) -> None:
    history = [
        snap("foo", "2024-01-01T10:00", paths=("/a",), tags=("foo",)),
        snap("bar", "2024-01-02T10:00", paths=("/a",), tags=("bar",)),
        snap("foobar", "2024-01-03T10:00", paths=("/a", "/b"), tags=("foo", "bar")),
        snap("none", "2024-01-04T10:00", paths=("/a",)),
        snap("other-host", "2024-01-05T10:00", host="g", paths=("/b",)),
    ]
    assert _ids_of(filter_snapshots(history, **kwargs)) == expected


def test_filter_accepts_iterators() -> None:
    history = [snap("x", "2024-01-01T10:00", tags=("t",))]
    hosts: Iterator[str] = iter(["h"])
    assert filter_snapshots(iter(history), hosts=hosts, tags=iter([{"t"}]), paths=iter(["/data"])) == history


# ---------------------------------------------------------------------------------------------
# plan_forget


def test_plan_forget_applies_the_policy_per_group() -> None:
    plans = plan_forget(_mixed(), Policy(keep_last=1))
    assert [(str(p.key), _ids_of(p.keep), _ids_of(p.remove)) for p in plans] == [
        ("host a, paths [/x]", ["4"], []),
        ("host a, paths [/x, /y]", ["2"], ["1"]),
        ("host b, paths [/x, /y]", ["3"], []),
    ]
    ungrouped = plan_forget(_mixed(), Policy(keep_last=1), set())
    assert [(str(p.key), _ids_of(p.keep)) for p in ungrouped] == [("all snapshots", ["4"])]


def test_plan_forget_refuses_an_empty_policy() -> None:
    with pytest.raises(UsageError, match="no policy was specified"):
        plan_forget(_mixed(), Policy(keep_daily=0))


def test_plan_forget_refuses_to_empty_a_group() -> None:
    """restic: a --keep-tag that matches nothing in a group must not delete the whole group."""
    with pytest.raises(BackupfsError, match=r"refusing to delete last snapshot of snapshot group tags \[\]") as info:
        plan_forget(_mixed(), Policy(keep_tags=(parse_tag_set("t"),)), {"tags"})
    assert not isinstance(info.value, UsageError)
    assert info.value.exit_code == 1
    with pytest.raises(BackupfsError, match=r"group host a, paths \[/x\]$"):
        plan_forget(_mixed(), Policy(keep_tags=(parse_tag_set("nope"),)))
    plans = plan_forget(_mixed(), Policy(keep_tags=(parse_tag_set("t"),)), {"host"})
    assert [_ids_of(p.keep) for p in plans] == [["4", "1"], ["3"]]
