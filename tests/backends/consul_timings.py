"""Measure the Consul backend's detection and restore times (medians over several trials).

    .venv/bin/python -m tests.backends.consul_timings [--trials 10] [--ttl 2] [--servers process|container]

* detection: ``abort()`` of a registrant (heartbeat stopped) → a watcher's snapshot without the instance. The
  abort follows the registration's first pass at once, so this is the worst case (a full TTL).
* restore: agent restart with state loss (``consul agent -dev`` stop + start) → ``on_state(RESTORED)``, and
  → the watcher's first fresh (not stale) snapshot with the instance again, both measured from the moment the
  restarted agent first answers HTTP (polled every 10 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import urllib.request
import uuid

from discovery.core.models import Instance
from discovery.core.plugins import create_backend
from discovery.testing import Follower
from tests.backends.consul_support import StateLog, started_backend
from tests.harness.servers import ServerHandle, start_server

CONVERGENCE_TIMEOUT = 30.0


def ignore_state(state: object, reason: object = None) -> None:
    """Registrations in the detection trials do not follow their state."""


async def detection_trial(url: str, ttl: float, trial: int) -> float:
    watcher, doomed = await started_backend(url), await started_backend(url)
    service = f"timing-detect-{trial}"
    follower = Follower(watcher.watch("default", service))
    try:
        await doomed.register(Instance(service, "v", "127.0.0.1", 1), ttl, ignore_state)
        await follower.until(lambda s: s.ids() == {"v"}, CONVERGENCE_TIMEOUT)
        started = time.monotonic()
        await doomed.abort()
        await follower.until(lambda s: not s.ids(), CONVERGENCE_TIMEOUT)
        return time.monotonic() - started
    finally:
        await follower.close()
        await watcher.close()


async def first_answer(server: ServerHandle) -> float:
    """When the agent's HTTP API first answers (polled every 10 ms)."""

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://{server.host}:{server.port}/v1/agent/self", timeout=1):
                return True
        except OSError:
            return False

    while not await asyncio.to_thread(answers):
        await asyncio.sleep(0.01)
    return time.monotonic()


async def restore_trial(server: ServerHandle, ttl: float, trial: int) -> tuple[float, float]:
    owner, watcher = await started_backend(server.url), await started_backend(server.url)
    service = f"timing-restore-{trial}"
    log = StateLog()
    follower = Follower(watcher.watch("default", service))
    try:
        await owner.register(Instance(service, "r", "127.0.0.1", 1), ttl, log)
        await follower.until(lambda s: s.ids() == {"r"} and not s.stale, CONVERGENCE_TIMEOUT)
        await asyncio.to_thread(server.stop)
        await follower.until(lambda s: s.stale, CONVERGENCE_TIMEOUT)
        answering = asyncio.create_task(first_answer(server))
        await asyncio.to_thread(server.start)
        ready = await answering
        await follower.until(lambda s: s.ids() == {"r"} and not s.stale, CONVERGENCE_TIMEOUT)
        visible = time.monotonic() - ready
        deadline = time.monotonic() + CONVERGENCE_TIMEOUT
        while len(log.states) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [s.value for s in log.states[:2]] == ["lost", "restored"], log.states
        return log.times[1] - ready, visible
    finally:
        await follower.close()
        await owner.close()
        await watcher.close()


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name}: median {statistics.median(values):.2f} s, min {min(values):.2f}, max {max(values):.2f} "
        f"(n={len(values)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--servers", default="process", choices=("process", "container"))
    args = parser.parse_args()
    server = await asyncio.to_thread(start_server, "consul", args.servers)
    try:
        scope = f"{server.url}/timings-{uuid.uuid4().hex}"
        bound = create_backend(scope).detection_bound(args.ttl)
        detections = [await detection_trial(scope, args.ttl, n) for n in range(args.trials)]
        restores = [await restore_trial(server, args.ttl, n) for n in range(args.trials)]
    finally:
        await asyncio.to_thread(server.close)
    print(f"Consul backend, TTL {args.ttl:g} s (declared detection bound {bound:g} s), {args.servers} agent")
    print(summary("detection (abort -> watcher without it)", detections))
    print(summary("restore (agent answers -> RESTORED)", [r for r, _ in restores]))
    print(summary("restore (agent answers -> watcher sees it, fresh)", [v for _, v in restores]))


if __name__ == "__main__":
    asyncio.run(main())
