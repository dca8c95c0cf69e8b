"""CI smoke check of the benchmarks: ``python -m benchmarks run --backend all --quick`` works end to end.

Benchmarks are never timed asserts: this only checks that every scenario produced a measurement (or a
documented skip) for every backend, against real servers from the harness provider in use.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.context import ALL_BACKENDS
from benchmarks.report import SCENARIO_IDS

pytestmark = pytest.mark.servers

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Rows the quick profile leaves out on purpose (none: every scenario runs on every backend).
EXPECTED_SKIPS: set[tuple[str, str]] = set()


def test_quick_profile_measures_every_scenario_on_every_backend(server_provider: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--backend", "all", "--quick", "--servers", server_provider,
         "--out", str(tmp_path), "--no-plots"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, f"benchmark run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]

    failed = [f"{r['scenario']} {r['backend']} {r['tool']}: {r['note']}" for r in rows if r["status"] == "failed"]
    assert not failed, "\n".join(failed)
    for scenario in SCENARIO_IDS:
        for backend in ALL_BACKENDS:
            mine = [r for r in rows if r["scenario"] == scenario and r["backend"] == backend]
            wanted = "skipped" if (scenario, backend) in EXPECTED_SKIPS else "ok"
            assert any(r["status"] == wanted for r in mine), f"no {wanted} row for {scenario} on {backend}: {mine}"
            for row in mine:
                if row["status"] == "ok":
                    assert row["values"], f"{scenario} {backend} {row['tool']} has no numbers"
    tools = {(r["scenario"], r["backend"], r["tool"]) for r in rows}
    for backend in ("zookeeper", "etcd", "consul"):  # the raw-client anchors run in --quick too
        assert sum(1 for s, b, _ in tools if s == "1-propagation" and b == backend) >= 2, backend
