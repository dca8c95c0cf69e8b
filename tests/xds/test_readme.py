"""The README's "Proxyless gRPC" example, run as written (bash) against a harness etcd: three servers
registered, `discovery xds`, a bootstrap, and a client dialing xds:///orders that spreads 300 calls evenly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import psutil
import pytest

from tests.harness import ServerHandle
from tests.xds.support import REPO

pytestmark = [pytest.mark.servers, pytest.mark.timeout(180)]


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- xds-example -->\n```bash\n(.*?)```", text, re.S)
    assert found is not None, "the README lost its xds example block"
    return found.group(1)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def kill_marked(marker: str) -> None:
    """End every process the example started (they carry our marker in their environment), by PID."""
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get("XDS_README_RUN") == marker:
                os.kill(process.pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError):
            continue


def test_readme_example_runs(etcd_server: ServerHandle, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    env = dict(os.environ, DISCOVERY_URL=f"{etcd_server.url}/readme-{marker[:8]}", XDS_PORT=str(free_port()),
               DEMO=str(tmp_path), XDS_README_RUN=marker)
    env.pop("GRPC_XDS_BOOTSTRAP", None)
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_example()], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        kill_marked(marker)
    assert done.returncode == 0, done.stderr + "".join(
        f"\n--- {log.name}\n{log.read_text()}" for log in tmp_path.glob("*.log"))
    counts = dict(re.findall(r"^(orders-\d): (\d+) calls$", done.stdout, re.M))
    assert sorted(counts) == ["orders-1", "orders-2", "orders-3"], done.stdout
    assert all(abs(int(n) - 100) <= 2 for n in counts.values()), done.stdout
