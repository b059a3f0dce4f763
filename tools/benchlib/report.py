"""Result tables: rows of figures per tool, their Markdown rendering."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    metric: str
    unit: str
    better: str  # "higher" or "lower"
    values: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class Section:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0

    def row(self, metric: str, unit: str, better: str) -> Row:
        for r in self.rows:
            if r.metric == metric and r.unit == unit:
                return r
        r = Row(metric, unit, better)
        self.rows.append(r)
        return r

    def put(self, metric: str, unit: str, better: str, tool: str, value: float | None, note: str = "") -> None:
        r = self.row(metric, unit, better)
        r.values[tool] = value
        if note:
            r.notes[tool] = note


def fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or max(abs(a), abs(b)) < 0.01:
        return "—"
    return f"{a / b:.2f}x"


def section_markdown(sec: Section, tools: list[str]) -> str:
    others = [t for t in tools if t != "backupfs"]
    head = ["metric", "better", *tools]
    if "backupfs" in tools:
        head += [f"backupfs/{o}" for o in others]
    lines = [f"### {sec.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sec.rows:
        cells = [f"{r.metric} ({r.unit})", "↑ higher" if r.better == "higher" else "↓ lower"]
        for t in tools:
            v = r.values.get(t)
            cells.append(fmt(v) + (f" ({r.notes[t]})" if t in r.notes and v is not None else ""))
            if v is None and t in r.notes:
                cells[-1] = f"— ({r.notes[t]})"
        if "backupfs" in tools:
            cells += [ratio(r.values.get("backupfs"), r.values.get(o)) for o in others]
        lines.append("| " + " | ".join(cells) + " |")
    if sec.notes:
        lines.append("")
        lines += [f"- {n}" for n in sec.notes]
    lines.append("")
    return "\n".join(lines)
