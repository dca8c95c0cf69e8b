"""``benchmarks/call_path.py`` on a real etcd: the files a registration crosses from ``Registry.register`` to the
etcd put, and that none of them is a pass-through we removed (the TLS client wrapper on a plain channel)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.harness import ServerHandle

pytestmark = pytest.mark.servers

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_a_registration_reaches_the_etcd_put_through_the_expected_files(etcd_server: ServerHandle) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.call_path", "--url", f"{etcd_server.url}/call-path-{uuid.uuid4().hex}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    entered = done.stdout.split("files entered at all:")[1].split()[1:]
    on_path = done.stdout.split("files on the call path:")[1].split("files entered")[0].split()[1:]
    assert on_path == [
        "discovery/registry/blocking.py", "discovery/registry/loop_thread.py", "discovery/registry/async_registry.py",
        "backends/discovery_etcd/backend.py", "backends/discovery_etcd/keepalive.py",
        "backends/discovery_etcd/connection.py",
    ]
    assert "backends/discovery_etcd/security.py" not in entered, "a plain channel needs no TLS client wrapper"
    # 13 measured for issue 14, plus discovery/core/connection.py: every call reports to the backend's connection
    # state (issue 18), a cheap property read while the connection is usable; plus discovery/core/tasks.py: the
    # per-key write lock (KeyLocks) the etcd and ZooKeeper adapters share.
    assert len(entered) <= 15, f"a registration now crosses more files than the 15 expected: {entered}"
