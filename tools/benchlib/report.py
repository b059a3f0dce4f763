"""Result tables: every figure is the median of its repeats with min and max; JSON and Markdown.

A row collects one sample per tool per repeat; the table shows the median and the range, and the
ratios backupfs/other are ratios of medians (a ratio of two single runs would carry both runs'
noise). The JSON document names its schema and version, so a reader can refuse one it does not
know; bump SCHEMA_VERSION whenever a key is renamed, removed or changes meaning.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "backupfs-bench"
# 1: the unversioned output before repeats (one value per row and tool).
# 2: repeats (median/min/max/samples per tool), ratios of medians, per-tree rows, corpus counts.
SCHEMA_VERSION = 2
EN_DASH = "\u2013"  # between min and max: a hyphen would read as a minus sign


@dataclass
class Row:
    metric: str
    unit: str
    better: str  # "higher" or "lower"
    tree: str | None = None  # the corpus tree the figure is about, when there is one
    samples: dict[str, list[float]] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, tool: str, value: float | None, note: str = "") -> None:
        """One repeat's figure for `tool`; None counts as a failed repeat."""
        self.samples.setdefault(tool, [])
        if value is None:
            self.failed[tool] = self.failed.get(tool, 0) + 1
        else:
            self.samples[tool].append(float(value))
        if note:
            self.notes[tool] = note

    def skip(self, tool: str, why: str) -> None:
        """`tool` has no figure here by design (not measurable in this run), which is not a failure."""
        self.samples.setdefault(tool, [])
        self.notes[tool] = f"n/a: {why}"

    def median(self, tool: str) -> float | None:
        s = self.samples.get(tool)
        return statistics.median(s) if s else None

    def stats(self, tool: str) -> dict[str, Any]:
        s = self.samples.get(tool, [])
        out: dict[str, Any] = {
            "median": statistics.median(s) if s else None,
            "min": min(s) if s else None,
            "max": max(s) if s else None,
            "n": len(s),
            "samples": s,
            "failed": self.failed.get(tool, 0),
        }
        if tool in self.notes:
            out["note"] = self.notes[tool]
        return out

    def ratios(self) -> dict[str, float | None]:
        """backupfs/other of the medians, for every other tool in the row."""
        if "backupfs" not in self.samples:
            return {}
        b = self.median("backupfs")
        out: dict[str, float | None] = {}
        for t in self.samples:
            if t != "backupfs":
                o = self.median(t)
                out[f"backupfs/{t}"] = b / o if b is not None and o else None
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "unit": self.unit,
            "better": self.better,
            "tree": self.tree,
            "tools": {t: self.stats(t) for t in self.samples},
            "ratios": self.ratios(),
        }


@dataclass
class Section:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0

    def row(self, metric: str, unit: str, better: str, tree: str | None = None) -> Row:
        for r in self.rows:
            if r.metric == metric and r.unit == unit:
                return r
        r = Row(metric, unit, better, tree)
        self.rows.append(r)
        return r

    def put(
        self,
        metric: str,
        unit: str,
        better: str,
        tool: str,
        value: float | None,
        note: str = "",
        tree: str | None = None,
    ) -> None:
        """Add one sample (one repeat) of `metric` for `tool`."""
        self.row(metric, unit, better, tree).add(tool, value, note)

    def note(self, text: str) -> None:
        """A note once, however many repeats make it."""
        if text not in self.notes:
            self.notes.append(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "duration_s": self.duration_s,
            "notes": self.notes,
            "rows": [r.to_json() for r in self.rows],
            "commands": self.raw,
        }


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


def cell(r: Row, tool: str) -> str:
    """`median (min-max)` (an en dash between), with failed repeats and the note, if any."""
    s = r.samples.get(tool, [])
    text = fmt(statistics.median(s)) if s else "—"
    if len(s) > 1:
        text += f" ({fmt(min(s))}{EN_DASH}{fmt(max(s))})"
    extra = []
    if r.failed.get(tool):
        extra.append(f"{r.failed[tool]} failed")
    if tool in r.notes:
        extra.append(r.notes[tool])
    if extra:
        text += f" [{'; '.join(extra)}]"
    return text


def section_markdown(sec: Section, tools: list[str]) -> str:
    others = [t for t in tools if t != "backupfs"]
    head = ["metric", "better", *tools]
    if "backupfs" in tools:
        head += [f"backupfs/{o}" for o in others]
    lines = [f"### {sec.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sec.rows:
        cells = [f"{r.metric} ({r.unit})", "↑ higher" if r.better == "higher" else "↓ lower"]
        cells += [cell(r, t) for t in tools]
        if "backupfs" in tools:
            cells += [ratio(r.median("backupfs"), r.median(o)) for o in others]
        lines.append("| " + " | ".join(cells) + " |")
    if sec.notes:
        lines.append("")
        lines += [f"- {n}" for n in sec.notes]
    lines.append("")
    return "\n".join(lines)


def report_json(meta: dict[str, Any], sections: list[Section]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "meta": meta,
        "sections": [s.to_json() for s in sections],
    }


def corpus_line(name: str, info: dict[str, Any]) -> str:
    counts = (
        f"{info.get('files', '?')} files, {info.get('folders', '?')} folders, {info.get('symlinks', '?')} symlinks, "
        f"{info.get('bytes', 0) / (1 << 20):.0f} MiB"
    )
    if "sources" in info:
        counts += (
            f" (copy of {', '.join(info['sources'])}, files over {info.get('max_file')} bytes left out, "
            f"fraction {info.get('fraction')} of {info.get('source_folders')} folders, "
            f"manifest {str(info.get('manifest_sha256', ''))[:12]})"
        )
    return f"{name}: {counts}"


def report_markdown(meta: dict[str, Any], sections: list[Section], tools: list[str], skipped: list[str]) -> str:
    m = meta
    loads = m.get("load_average_1min", {})
    lines = [
        f"## Results {m['date']} (scale {m['scale']}, seed {m['seed']}, repeat {m.get('repeat', 1)})",
        "",
        f"- machine: {m['nproc']} cores, {m['cpu']}, {m['mem_gib']} GiB RAM, kernel {m['kernel']}, "
        f"Python {m['python']}",
        f"- versions: {'; '.join(f'{k}: {v}' for k, v in m['versions'].items())}",
        f"- settings: {'; '.join(f'{k}: {v}' for k, v in m['settings'].items())}",
        f"- backupfs commit: {m['backupfs_commit']}",
        f"- corpus: {'; '.join(corpus_line(k, v) for k, v in m.get('corpus', {}).items())}",
        f"- {m.get('rss', '')}",
        f"- {m.get('caches', '')}; 1-minute load average during the run: "
        f"{loads.get('min', '?')}-{loads.get('max', '?')}",
        f"- {m.get('method', '')}",
        "- ratios are backupfs/other of the medians: for speeds (MiB/s, files/s) above 1x means backupfs is "
        "faster; for seconds, sizes and memory below 1x means backupfs is better",
    ]
    if skipped:
        lines.append(f"- tools skipped: {'; '.join(skipped)}")
    lines.append("")
    for s in sections:
        lines.append(section_markdown(s, tools))
    return "\n".join(lines)
