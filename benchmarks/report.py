"""Result rows, the JSON file and the printed table.

A row is one measurement of one tool on one backend in one scenario. ``values`` holds the numbers (``p50``,
``p99``, ``rate``, …) in ``unit``; ``status`` is ``ok``, ``skipped`` or ``failed`` with the reason in ``note``.
The table's last column is this library's cost relative to each anchor's in the same scenario (see
:func:`cost_ratio`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCENARIOS = (
    ("1-propagation", "register() returns in A → snapshot delivered in B (other process)"),
    ("2-register-1", "registration latency / throughput, 1 registrant"),
    ("2-register-16", "registration latency / throughput, 16 concurrent registrants"),
    ("3-detection", "kill -9 of a registrant → removal at a watcher"),
    ("4-restore", "session/lease/check loss → restored, and visible at a watcher"),
    ("5-cached-lookup", "lookup of a watched service + pick"),
    ("5-uncached-lookup", "lookup of an unwatched service (one backend read)"),
    ("6-scale", "N instances / N/10 services / N/10 subscribers in one process"),
)
SCENARIO_IDS = tuple(s for s, _ in SCENARIOS)


@dataclass
class Row:
    """One measurement."""

    scenario: str
    backend: str
    tool: str
    unit: str
    values: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    note: str = ""
    samples: list[float] = field(default_factory=list)  # raw samples for the plots (propagation only)

    def headline(self) -> float:
        """The number ratios are taken of: the rate when there is one (higher is better), else the p50 from the call's
        start (propagation), else the p50."""
        for key in ("rate", "call_p50", "p50"):
            if key in self.values:
                return float(self.values[key])
        return math.nan


@dataclass
class Report:
    """Every row of one run and the facts of the run."""

    meta: dict[str, Any]
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        """Add a row and print it at once (a run is long)."""
        self.rows.append(row)
        print(f"  {row.scenario:18} {row.backend:9} {row.tool:22} {_cells(row)}", flush=True)
        return row

    def to_json(self) -> dict[str, Any]:
        """The JSON document."""
        return {"meta": self.meta, "rows": [asdict(row) for row in self.rows]}

    def write(self, path: Path) -> None:
        """Write the JSON file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cells(row: Row) -> str:
    if row.status != "ok":
        return f"{row.status}: {row.note}"
    shown = ", ".join(f"{k} {_fmt(v)}" for k, v in row.values.items() if k not in ("min", "max", "mean"))
    return f"{shown} {row.unit}" + (f"  ({row.note})" if row.note else "")


def cost_ratio(row: Row, rows: list[Row]) -> float:
    """How much more this library costs than the anchor ``row`` (same scenario, backend, unit): 1.10 = 10 %
    slower; below 1 = faster. Latencies: ours p50 ÷ anchor p50; rates: anchor rate ÷ ours rate.
    """
    ours = [r for r in rows if (r.scenario, r.backend, r.unit, r.tool) == (row.scenario, row.backend, row.unit, "ours")]
    if not ours or row.tool == "ours" or row.status != "ok" or ours[0].status != "ok":
        return math.nan
    mine, theirs = ours[0].headline(), row.headline()
    if not mine or not theirs:
        return math.nan
    return theirs / mine if "rate" in row.values else mine / theirs


#: What the before → after column shows per scenario: the numbers a row is judged by.
_MOVED_KEYS = {
    "1-propagation": (("call_p50", "p50 "), ("call_p99", "p99 ")),
    "6-scale": (("p99", "p99 "), ("sync_s", "sync "), ("idle_cpu_pct", "idle % ")),
}


def before_after(row: Row, before: list[Row]) -> str:
    """``old → new`` of the numbers a row is judged by (propagation: p50 and p99 from the call's start; registration:
    the rate; scale: fan-out p99, sync seconds and idle CPU; else p50) against the row of the same scenario, backend
    and tool in an earlier run; ``new`` if it had none."""
    if row.status != "ok":
        return ""
    old = next((r for r in before if (r.scenario, r.backend, r.tool) == (row.scenario, row.backend, row.tool)), None)
    if old is None or old.status != "ok":
        return "new"
    keys = _MOVED_KEYS.get(row.scenario) or ((("rate", "") if "rate" in row.values else ("p50", "")),)
    parts = []
    for key, label in keys:
        if key in row.values and key in old.values:
            parts.append(f"{label}{_fmt(float(old.values[key]))} → {_fmt(float(row.values[key]))}")
    return "; ".join(parts)


def markdown_table(rows: list[Row], before: list[Row] | None = None) -> str:
    """The table for docs/benchmarks.md: one line per row, the ratio to ours for anchors, and with ``before`` (an
    earlier run's rows) a ``before → after`` column of each row's headline number."""
    extra = " before → after |" if before is not None else ""
    lines = [
        "| scenario | backend | tool | n | p50 | p99 | other | unit | ours cost ÷ anchor |" + extra,
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- | ---: |" + (" --- |" if before is not None else ""),
    ]
    for row in rows:
        v = row.values
        moved = f" {before_after(row, before)} |" if before is not None else ""
        if row.status != "ok":
            cells = f"| {row.scenario} | {row.backend} | {row.tool} | | | | {row.status}: {row.note} | | |"
            lines.append(cells + moved)
            continue
        other = ", ".join(f"{k} {_fmt(x)}" for k, x in v.items() if k not in ("n", "p50", "p99", "min", "max", "mean"))
        if row.note:
            other = f"{other}; {row.note}" if other else row.note
        r = cost_ratio(row, rows)
        shown = "" if math.isnan(r) else f"{r:.2f}x"
        count = int(v.get("n", 0)) or ""
        lines.append(
            f"| {row.scenario} | {row.backend} | {row.tool} | {count} | {_fmt(v.get('p50', math.nan))} "
            f"| {_fmt(v.get('p99', math.nan))} | {other} | {row.unit} | {shown} |" + moved
        )
    return "\n".join(lines)


def print_table(rows: list[Row]) -> None:
    """Print the table to the terminal."""
    print()
    print(markdown_table(rows))
