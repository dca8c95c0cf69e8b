"""ServiceLifespan under a real uvicorn process (issue 18, item 4).

uvicorn, on SIGTERM, closes its listening socket and waits for open connections *before* it sends
``lifespan.shutdown``. The test starts uvicorn as a process with a minimal app (tests/client/uvicorn_app.py)
registered in a real etcd, keeps three slow requests in flight, sends SIGTERM, and records from outside: when a
watcher in this process first sees the instance ``DRAINING``, and when the port first refuses a connection.

With the signal hook (the default) the instance is ``DRAINING`` while the port still accepts, and no request in
flight fails. Without it (``drain_on_signal=False``) uvicorn's own order shows: the port closes first.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from discovery import Registry, Snapshot, Status
from tests.client.conftest import dead_ports
from tests.client.polling import wait_until
from tests.harness import ServerHandle

pytestmark = [pytest.mark.servers, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
IN_FLIGHT = 3
SLOW_SECONDS = 3.0
SETTLE = 1.5
DEADLINE = 60.0


@dataclass
class Timeline:
    """What the outside world saw, in ``time.monotonic()`` seconds."""

    draining_seen: float | None = None
    last_accepted: float | None = None
    first_refused: float | None = None
    answers: list[int | str] = field(default_factory=list)


def _probe_port(port: int, timeline: Timeline, stop: threading.Event) -> None:
    deadline = time.monotonic() + DEADLINE
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                timeline.last_accepted = time.monotonic()
        except ConnectionRefusedError:
            timeline.first_refused = time.monotonic()
            return
        except OSError:
            pass
        stop.wait(0.01)


def _slow_request(port: int, timeline: Timeline) -> None:
    try:
        timeline.answers.append(httpx.get(f"http://127.0.0.1:{port}/slow", timeout=DEADLINE).status_code)
    except httpx.HTTPError as error:
        timeline.answers.append(f"{type(error).__name__}: {error}")


def _run(url: str, drain_on_signal: bool) -> Timeline:
    (port,) = dead_ports(1)
    env = {**os.environ, "DISCOVERY_URL": url, "APP_PORT": str(port), "SLOW_SECONDS": str(SLOW_SECONDS),
           "SETTLE": str(SETTLE), "DRAIN_ON_SIGNAL": "1" if drain_on_signal else "0"}
    timeline = Timeline()
    with Registry.connect(url) as watcher_registry, watcher_registry.watch("drainy") as watch:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.client.uvicorn_app:app", "--host", "127.0.0.1",
             "--port", str(port), "--lifespan", "on", "--timeout-graceful-shutdown", "30", "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            watch.until(lambda s: s.get("drainy-1") is not None, DEADLINE)

            def draining_or_gone(snapshot: Snapshot) -> bool:
                instance = snapshot.get("drainy-1")
                if instance is not None and instance.status is Status.DRAINING and timeline.draining_seen is None:
                    timeline.draining_seen = time.monotonic()
                return instance is None or timeline.draining_seen is not None

            requests = [threading.Thread(target=_slow_request, args=(port, timeline)) for _ in range(IN_FLIGHT)]
            for thread in requests:
                thread.start()
            wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/busy", timeout=5).text == str(IN_FLIGHT),
                       DEADLINE, "the slow requests in flight")
            stop_probing = threading.Event()
            prober = threading.Thread(target=_probe_port, args=(port, timeline, stop_probing))
            prober.start()
            wait_until(lambda: timeline.last_accepted is not None, DEADLINE, "the prober's first connect")

            server.send_signal(signal.SIGTERM)
            watch.until(draining_or_gone, DEADLINE)
            for thread in requests:
                thread.join(DEADLINE)
            prober.join(DEADLINE)
            stop_probing.set()
            # After a graceful shutdown uvicorn re-raises the signal it caught, with the default handler restored.
            assert server.wait(DEADLINE) in (0, -signal.SIGTERM)
            watch.until(lambda s: s.get("drainy-1") is None, DEADLINE)  # deregistered at the end
        finally:
            if server.poll() is None:
                server.kill()
            output = server.communicate(timeout=10)[0]
    assert "Traceback" not in output, output
    return timeline


@pytest.fixture
def etcd_url(etcd_server: ServerHandle) -> str:
    return f"{etcd_server.url}/asgi-{uuid.uuid4().hex[:12]}?ttl=3"


def test_uvicorn_drains_before_the_port_stops_accepting(etcd_url: str) -> None:
    timeline = _run(etcd_url, drain_on_signal=True)
    assert timeline.answers == [200] * IN_FLIGHT, timeline.answers  # no request in flight failed
    assert timeline.draining_seen is not None and timeline.first_refused is not None, timeline
    assert timeline.draining_seen < timeline.first_refused, timeline
    assert timeline.last_accepted is not None and timeline.last_accepted > timeline.draining_seen, timeline


def test_without_the_signal_hook_uvicorn_closes_the_port_before_the_drain(etcd_url: str) -> None:
    timeline = _run(etcd_url, drain_on_signal=False)
    assert timeline.answers == [200] * IN_FLIGHT, timeline.answers
    assert timeline.first_refused is not None, timeline
    # uvicorn's own order: listener closed, connections awaited, then lifespan.shutdown starts the drain.
    assert timeline.draining_seen is None or timeline.first_refused < timeline.draining_seen, timeline
