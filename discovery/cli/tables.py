"""Plain-text tables for the command line."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from discovery.core.models import Instance, Snapshot


def render_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def instance_rows(instances: Iterable[Instance]) -> list[tuple[object, ...]]:
    """One row per instance: id, address, status, zone, weight, labels."""
    return [
        (
            i.id,
            f"{i.address}:{i.port}",
            i.status.value,
            i.zone or "-",
            i.weight,
            ",".join(f"{k}={v}" for k, v in i.labels.items()) or "-",
        )
        for i in instances
    ]


INSTANCE_HEADERS = ("ID", "ADDRESS", "STATUS", "ZONE", "WEIGHT", "LABELS")


def render_snapshot(snapshot: Snapshot) -> str:
    """A titled table of a snapshot."""
    title = f"{snapshot.service}.{snapshot.namespace}  revision {snapshot.revision}"
    title += "  (STALE: backend unreachable, last known set)" if snapshot.stale else ""
    if not snapshot.instances:
        return f"{title}\n  (no instances)"
    return f"{title}\n{render_table(INSTANCE_HEADERS, instance_rows(snapshot.instances))}"
