"""Measure the ZooKeeper backend's restore time after a forced session expiry and its detection time after a
registrant process is killed with SIGKILL (medians over N trials) against a harness ZooKeeper.

    .venv/bin/python -m tests.backends.zookeeper_measure [--trials 10] [--servers process|container]
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

from discovery.core.backend import RegistrationState
from discovery.core.models import Instance
from discovery.registry.async_registry import AsyncRegistry
from discovery_zookeeper import ZooKeeperBackend
from tests.backends.zookeeper_support import SESSION_TIMEOUT, backend_url, expire_session_now
from tests.harness import ServerHandle, start_server


async def restore_after_expiry(server: ServerHandle, trial: int) -> tuple[float, float]:
    """Seconds from the expiry (twin session closed) to RESTORED, and to a second client seeing it again."""
    url = backend_url(server)
    async with await AsyncRegistry.connect(url) as owner, await AsyncRegistry.connect(url) as reader:
        registration = await owner.register(Instance("measure", f"m-{trial}", "127.0.0.1", 20000))
        async with reader.watch("measure") as watch:
            await watch.until(lambda s: len(s) == 1, 15)
            backend = owner.backend
            assert isinstance(backend, ZooKeeperBackend)
            await asyncio.to_thread(expire_session_now, server, backend)
            expired_at = time.monotonic()
            await registration.wait_for(RegistrationState.RESTORED, 30)
            restored = time.monotonic() - expired_at
            await watch.until(lambda s: len(s) == 1 and not s.stale, 30)
            visible = time.monotonic() - expired_at
    return restored, visible


async def detection_after_kill(server: ServerHandle) -> float:
    """Seconds from SIGKILL of a registrant process to a watcher seeing its instances gone."""
    url = backend_url(server)
    process = subprocess.Popen(
        [sys.executable, "-m", "discovery.testing.registrant", url, "default", "killed", "3"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.to_thread(process.stdout.readline)
        assert line.startswith("READY"), line
        ids = set(line.split()[1:])
        async with await AsyncRegistry.connect(url) as reader, reader.watch("killed") as watch:
            await watch.until(lambda s: s.ids() == ids, 15)
            killed_at = time.monotonic()
            os.kill(process.pid, signal.SIGKILL)
            await watch.until(lambda s: not s.ids(), 60)
            return time.monotonic() - killed_at
    finally:
        process.kill()
        process.wait()


async def main(trials: int, provider: str) -> None:
    with start_server("zookeeper", provider) as server:
        async with await AsyncRegistry.connect(backend_url(server)) as probe:
            bound = probe.detection_bound()
        restores, visibles, detections = [], [], []
        for trial in range(trials):
            restored, visible = await restore_after_expiry(server, trial)
            restores.append(restored)
            visibles.append(visible)
        for _ in range(trials):
            detections.append(await detection_after_kill(server))
    print(f"ZooKeeper ({provider}), session_timeout={SESSION_TIMEOUT}s, declared detection bound {bound:.2f}s, "
          f"{trials} trials each")
    print(f"restore after forced expiry: median {statistics.median(restores) * 1000:.0f} ms "
          f"(min {min(restores) * 1000:.0f}, max {max(restores) * 1000:.0f})")
    print(f"  ... visible to another client: median {statistics.median(visibles) * 1000:.0f} ms "
          f"(min {min(visibles) * 1000:.0f}, max {max(visibles) * 1000:.0f})")
    print(f"detection after kill -9: median {statistics.median(detections):.2f} s "
          f"(min {min(detections):.2f}, max {max(detections):.2f}; bound {bound:.2f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--servers", default="process", choices=("process", "container"))
    arguments = parser.parse_args()
    asyncio.run(main(arguments.trials, arguments.servers))
