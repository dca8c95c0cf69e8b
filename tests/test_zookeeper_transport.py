"""Smoke check of ``python -m benchmarks.zookeeper_transport``: every transport it compares (kazoo blocking, kazoo
answered on the loop, a loop-native asyncio connection on its loop and through a LoopThread, and this library's
registries) makes its creates on the servers CI runs, and both tables list each of them.

The timings it prints are for notes and docs/benchmarks.md, not asserted.
"""

from __future__ import annotations

import pytest

from benchmarks.zookeeper_transport import TRANSPORTS
from tests.benchmark_scripts import run_benchmark

pytestmark = pytest.mark.servers


def test_every_transport_is_timed_back_to_back_and_paced(server_provider: str) -> None:
    printed = run_benchmark("benchmarks.zookeeper_transport", "--creates", "30", "--rounds", "1", "--paced", "5",
                            "--pace", "0.001", server_provider=server_provider)
    rows = [line for line in printed.splitlines() if line.startswith("| ") and not line.startswith("| transport")]
    for label, _ in TRANSPORTS.values():
        assert sum(row.startswith(f"| {label} |") for row in rows) == 2, printed
