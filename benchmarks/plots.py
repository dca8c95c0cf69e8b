"""Draw the PNGs of a results.json (run in the anchor venv, which has matplotlib; stdlib + matplotlib only).

    python benchmarks/plots.py RESULTS_JSON OUT_DIR

* ``propagation.png``: per backend, the distribution (ECDF) of register() call → watcher delivery, per tool.
* ``scale.png``: RSS, time to initial sync and fan-out p99 against the instance count, per backend.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def propagation(rows: list[dict], out: Path) -> Path | None:
    rows = [r for r in rows if r["scenario"] == "1-propagation" and r["status"] == "ok" and r["samples"]]
    backends = [b for b in ("memory", "zookeeper", "etcd", "consul") if any(r["backend"] == b for r in rows)]
    if not backends:
        return None
    figure, axes = plt.subplots(1, len(backends), figsize=(3.6 * len(backends), 3.2), squeeze=False)
    for axis, backend in zip(axes[0], backends, strict=True):
        for row in (r for r in rows if r["backend"] == backend):
            samples = sorted(row["samples"])
            ranks = [(i + 1) / len(samples) for i in range(len(samples))]
            axis.step(samples, ranks, where="post", label=row["tool"], linewidth=1.5 if row["tool"] == "ours" else 1)
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_title(backend, fontsize=10)
        axis.set_xlabel("register() call → delivered in B (ms)", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=6, loc="lower right")
    axes[0][0].set_ylabel("fraction of trials", fontsize=8)
    figure.tight_layout()
    path = out / "propagation.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def scale(rows: list[dict], out: Path) -> Path | None:
    # The N-shaped rows of this library: not the raw listings (no RSS or fan-out) nor Consul's wide shape.
    rows = [r for r in rows if r["scenario"] == "6-scale" and r["status"] == "ok" and r["tool"].startswith("ours N=")]
    if not rows:
        return None
    metrics = (("rss_mb", "RSS after sync (MiB)"), ("sync_s", "time to initial sync (s)"),
               ("p99", "fan-out p99 of one change (ms)"), ("sync_cpu_s", "CPU for initial sync (s)"))
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.0))
    for axis, (key, title) in zip(axes, metrics, strict=True):
        for backend in sorted({r["backend"] for r in rows}):
            points = sorted((r["values"]["instances"], r["values"][key]) for r in rows if r["backend"] == backend)
            axis.plot([x for x, _ in points], [y for _, y in points], marker="o", label=backend)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("instances (services = subscribers = N/10)", fontsize=7)
        axis.tick_params(labelsize=7)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    path = out / "scale.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def main(argv: list[str]) -> int:
    rows = json.loads(Path(argv[0]).read_text())["rows"]
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    made = [p for p in (propagation(rows, out), scale(rows, out)) if p is not None]
    print("plots: " + ", ".join(str(p) for p in made) if made else "plots: nothing to draw")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
