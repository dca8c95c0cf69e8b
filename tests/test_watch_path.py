"""Smoke check of ``python -m benchmarks.watch_path``: it traces a watch event on a real server end to end.

The counts it prints are for notes and decision pages, not asserted; this only keeps the script working and
checks that it sees the event reach the subscriber through the one fan-out (the registry's watch hub).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.pytest_plugin import unavailable

pytestmark = pytest.mark.servers

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_watch_path_traces_an_event_to_every_consumer(server_provider: str) -> None:
    if server_provider not in ("process", "container"):
        unavailable(f"benchmarks.watch_path starts its own server: needs process or container, not {server_provider}")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.watch_path", "--backend", "etcd", "--rounds", "1",
         "--servers", server_provider],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, f"watch_path failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    blocks = done.stdout.split("\n## ")[1:]
    assert [block.split(":", 1)[0] for block in blocks] == [
        "etcd, subscribe", "etcd, async-for", "etcd, blocking-for"
    ], done.stdout
    for block in blocks:
        assert "backends/discovery_etcd/watch.py" in block, block
        assert "discovery/registry/watch_hub.py: SharedWatch._deliver_one, SharedWatch._publish" in block, block
