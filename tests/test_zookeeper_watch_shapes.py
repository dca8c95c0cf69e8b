"""Smoke check of ``python -m benchmarks.zookeeper_watch_shapes``: ZooKeeper's ``addWatch`` sent through kazoo's own
request queue arms a persistent recursive watch whose events reach the watcher for every node created under it.

The timings it prints are for notes and decision pages, not asserted; this keeps the script working and holds the
claim docs/decisions/zookeeper-writes.md builds on: the persistent watch heard every create, on the servers CI runs.
"""

from __future__ import annotations

import pytest

from tests.benchmark_scripts import run_benchmark

pytestmark = pytest.mark.servers


def test_a_persistent_recursive_watch_hears_every_create(server_provider: str) -> None:
    printed = run_benchmark("benchmarks.zookeeper_watch_shapes", "--creates", "50", "--rounds", "1", "--trials", "5",
                            "--pace", "0.01", server_provider=server_provider)
    rows = [line for line in printed.splitlines() if line.startswith("| ") and not line.startswith("| shape")]
    assert any("persistent recursive watch on the parent" in row and "| 50 of 50 |" in row for row in rows), printed
    assert sum("ms" not in row and "persistent recursive watch + `get`" in row for row in rows) == 1, printed
    assert sum("children watch + `get_children` + `get`" in row for row in rows) == 1, printed
