"""Smoke check of ``python -m benchmarks.zookeeper_watch_shapes``: ZooKeeper's ``addWatch`` sent through kazoo's own
request queue arms a persistent recursive watch whose events reach the watcher for every node created under it.

The timings it prints are for notes and decision pages, not asserted; this keeps the script working and holds the
claim docs/decisions/zookeeper-writes.md builds on: the persistent watch heard every create, on the servers CI runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.pytest_plugin import unavailable

pytestmark = pytest.mark.servers

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_a_persistent_recursive_watch_hears_every_create(server_provider: str) -> None:
    if server_provider not in ("process", "container"):
        unavailable(f"benchmarks.zookeeper_watch_shapes starts its own server: needs process or container, "
                    f"not {server_provider}")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.zookeeper_watch_shapes", "--servers", server_provider,
         "--creates", "50", "--rounds", "1", "--trials", "5", "--pace", "0.01"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, f"zookeeper_watch_shapes failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| shape")]
    assert any("persistent recursive watch on the parent" in row and "| 50 of 50 |" in row for row in rows), done.stdout
    assert sum("ms" not in row and "persistent recursive watch + `get`" in row for row in rows) == 1, done.stdout
    assert sum("children watch + `get_children` + `get`" in row for row in rows) == 1, done.stdout
