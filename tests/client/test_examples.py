"""The examples run and print what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("asgi_service.py", ["registered: ['greeter-1']", "client: 200 hello from greeter-1", "shutdown.complete"]),
        ("httpx_client.py", ["{'items': ['apple', 'pear']}", "set aside after connect failures: ['orders-2']"]),
    ],
)
def test_example_runs(script: str, expected: list[str]) -> None:
    env = {**os.environ, "DISCOVERY_URL": "memory://"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    for line in expected:
        assert line in done.stdout, done.stdout
