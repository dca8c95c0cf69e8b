"""Smoke check of ``python -m benchmarks.zookeeper_transport``: every transport it compares (kazoo blocking, kazoo
answered on the loop, a loop-native asyncio connection on its loop and through a LoopThread, and this library's
registries) makes its creates on the servers CI runs, and both tables list each of them.

The timings it prints are for notes and docs/benchmarks.md, not asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.zookeeper_transport import TRANSPORTS
from tests.harness.pytest_plugin import unavailable

pytestmark = pytest.mark.servers

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_every_transport_is_timed_back_to_back_and_paced(server_provider: str) -> None:
    if server_provider not in ("process", "container"):
        unavailable(f"benchmarks.zookeeper_transport starts its own server: needs process or container, "
                    f"not {server_provider}")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.zookeeper_transport", "--servers", server_provider,
         "--creates", "30", "--rounds", "1", "--paced", "5", "--pace", "0.001"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, f"zookeeper_transport failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| transport")]
    for label, _ in TRANSPORTS.values():
        assert sum(row.startswith(f"| {label} |") for row in rows) == 2, done.stdout
