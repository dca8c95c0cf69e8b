"""Measure the etcd backend's restore time after an external lease revoke and its kill -9 detection time.

    .venv/bin/python -m tests.backends.etcd_timings [--trials 10] [--ttl 2] [--servers process|container]

Starts its own etcd through the test harness (or uses ``--url``), prints every trial and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid

from discovery.core.backend import RegistrationState
from discovery.core.models import Instance
from discovery.testing import Follower
from tests.backends.etcd_support import raw_client, started_backend
from tests.harness import start_server


async def restore_after_revoke(url: str, host: str, port: int, ttl: float) -> tuple[float, float]:
    """Seconds from an external LeaseRevoke until RESTORED, and until a watcher sees the instance again."""
    prefix = f"/timing-{uuid.uuid4().hex}"
    registrant = await started_backend(f"{url}{prefix}?ttl={ttl}")
    observer = await started_backend(f"{url}{prefix}?ttl={ttl}")
    raw = raw_client(host, port)
    restored = asyncio.Event()

    def on_state(state: RegistrationState, reason: object = None) -> None:
        if state is RegistrationState.RESTORED:
            restored.set()

    try:
        await registrant.register(Instance("timed", "timed-1", "127.0.0.1", 1), ttl, on_state)
        follower = Follower(observer.watch("default", "timed"))
        await follower.until(lambda s: s.ids() == {"timed-1"}, 15)
        started = time.monotonic()
        await raw.revoke_lease(registrant.lease_ids()[int(ttl)])
        await follower.until(lambda s: not s.ids(), 15)
        await asyncio.wait_for(restored.wait(), 15)
        restore = time.monotonic() - started
        await follower.until(lambda s: s.ids() == {"timed-1"}, 15)
        visible = time.monotonic() - started
        await follower.close()
        return restore, visible
    finally:
        await raw.close()
        await registrant.close()
        await observer.close()


async def detection_after_kill(url: str, ttl: float) -> float:
    """Seconds from SIGKILL of a registrant process until a watcher sees its instances gone."""
    scoped = f"{url}/timing-{uuid.uuid4().hex}?ttl={ttl}"
    observer = await started_backend(scoped)
    process = subprocess.Popen(
        [sys.executable, "-m", "discovery.testing.registrant", scoped, "default", "killed", "2", str(ttl)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)  # type: ignore[union-attr]
        ids = set(line.split()[1:])
        follower = Follower(observer.watch("default", "killed"))
        await follower.until(lambda s: s.ids() == ids, 15)
        started = time.monotonic()
        os.kill(process.pid, signal.SIGKILL)
        await follower.until(lambda s: not s.ids(), 30)
        elapsed = time.monotonic() - started
        await follower.close()
        return elapsed
    finally:
        process.kill()
        process.wait()
        await observer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--servers", default="process", choices=("process", "container"))
    args = parser.parse_args()
    with start_server("etcd", args.servers) as server:
        url = f"etcd://{server.host}:{server.port}"
        restores, visibles, detections = [], [], []
        for trial in range(args.trials):
            restore, visible = await restore_after_revoke(url, server.host, server.port, args.ttl)
            detection = await detection_after_kill(url, args.ttl)
            restores.append(restore)
            visibles.append(visible)
            detections.append(detection)
            print(f"trial {trial + 1}: restored {restore:.3f} s, visible again {visible:.3f} s, "
                  f"kill -9 detected {detection:.3f} s", flush=True)
    bound = args.ttl + 1.0
    print(f"ttl={args.ttl:g} s, declared detection bound {bound:g} s, {args.trials} trials ({args.servers})")
    print(f"median restore after external lease revoke: {statistics.median(restores):.3f} s "
          f"(max {max(restores):.3f}); visible to a watcher again: {statistics.median(visibles):.3f} s")
    print(f"median detection after kill -9: {statistics.median(detections):.3f} s (max {max(detections):.3f})")


if __name__ == "__main__":
    asyncio.run(main())
