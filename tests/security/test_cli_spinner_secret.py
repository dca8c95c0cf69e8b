"""Finding 6: on a terminal ``apply``, ``delete``, ``proxy`` and ``dns`` showed a spinner
``connecting to etcd://app:<password>@...``; the earlier leak tests ran without a terminal only.

Each command runs as a real process against the TLS + RBAC etcd of tests/harness/secure.py with the password in
the URL's user part, with stdout/stderr on a pseudo-terminal (the spinner is drawn), and on pipes (a guard: that
path did not leak before either).
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.harness.secure import ETCD_PREFIX, SecureServer

pytestmark = pytest.mark.servers

MANIFEST = """apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {{selector: {{app: {name}}}, ports: [{{port: 80}}]}}
"""


def run_on_terminal(argv: list[str], env: dict[str, str], *, stop_after: str | None = None,
                    timeout: float = 60) -> tuple[int, str]:
    """Run ``python -m discovery.cli argv`` with stdin/stdout/stderr on a pseudo-terminal; all it wrote."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "discovery.cli", *argv], stdin=terminal, stdout=terminal,
                               stderr=terminal, env=env, close_fds=True)
    os.close(terminal)
    output = b""
    stopping = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
                if stop_after is not None and stop_after.encode() in output and not stopping:
                    stopping = True  # once: a second SIGTERM during shutdown would meet the default handler
                    process.send_signal(signal.SIGTERM)
            elif process.poll() is not None:
                break
        else:
            pytest.fail(f"{argv} did not end within {timeout} s: {output[-2000:]!r}")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        os.close(controller)
    return process.returncode, output.decode(errors="replace")


@pytest.fixture
def leaky_url(secure_etcd: SecureServer) -> tuple[str, str]:
    """A working etcd URL with the password in its user part (``etcd://app:<password>@host``), and the password."""
    password = secure_etcd.credentials["app_password"]
    host = secure_etcd.base_url.removeprefix("etcd://")
    url = f"etcd://app:{password}@{host}{ETCD_PREFIX}/spin-{uuid.uuid4().hex[:8]}?ttl=2&{secure_etcd.tls_query()}"
    return url, password


def environment() -> dict[str, str]:
    return {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200", "PYTHONPATH": os.getcwd(),
            "DISCOVERY_CLUSTER_IP_RANGE": f"127.{uuid.uuid4().int % 200 + 20}.{uuid.uuid4().int % 250 + 1}.0/24"}


def test_the_spinner_on_a_terminal_shows_the_url_redacted(leaky_url: tuple[str, str], tmp_path: Path) -> None:
    url, password = leaky_url
    manifest = tmp_path / "svc.yaml"
    manifest.write_text(MANIFEST.format(name="spin"))
    env = environment()
    runs = [
        (["--url", url, "apply", "-f", str(manifest)], None),
        (["--url", url, "dns", "--port", "0"], "dns ready"),
        (["--url", url, "delete", "service", "spin"], None),
    ]
    for argv, stop_after in runs:
        code, shown = run_on_terminal(argv, env, stop_after=stop_after)
        assert password not in shown, f"{argv[2:]}: {shown!r}"
        assert "connecting to" in shown and "app:***@" in shown, f"{argv[2:]}: no spinner was drawn: {shown!r}"
        assert code == 0, f"{argv[2:]}: exit {code}: {shown!r}"


def test_without_a_terminal_nothing_shows_the_password(leaky_url: tuple[str, str], tmp_path: Path) -> None:
    url, password = leaky_url
    manifest = tmp_path / "svc.yaml"
    manifest.write_text(MANIFEST.format(name="piped"))
    env = environment()
    for argv in (["apply", "-f", str(manifest)], ["get", "services", "piped"], ["delete", "service", "piped"],
                 ["delete", "service", "piped"]):  # the second delete fails: its message too
        done = subprocess.run([sys.executable, "-m", "discovery.cli", "--url", url, *argv], capture_output=True,
                              text=True, timeout=60, env=env, check=False)
        assert password not in done.stdout + done.stderr, argv
    wrong = url.replace(password, "Wrong-Secret-1234")
    done = subprocess.run([sys.executable, "-m", "discovery.cli", "--url", wrong, "get", "services"],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode != 0 and "Wrong-Secret-1234" not in done.stdout + done.stderr
