"""Running a benchmark script from a test: ``python -m <module> ...`` in the repository, its output checked by the
caller (benchmarks print tables; nothing in them is a timed assert)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness.pytest_plugin import unavailable

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(module: str, *args: str, server_provider: str, timeout: float = 300) -> str:
    """Run ``python -m module --servers <server_provider> args...`` (a script that starts its own server, so it
    needs the process or container provider) and return its standard output; fails the test on a non-zero exit."""
    if server_provider not in ("process", "container"):
        unavailable(f"{module} starts its own server: needs process or container, not {server_provider}")
    done = subprocess.run(
        [sys.executable, "-m", module, "--servers", server_provider, *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert done.returncode == 0, f"{module} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout
