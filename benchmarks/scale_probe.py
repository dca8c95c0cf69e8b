"""Scenario 6's measuring process, alone so that its RSS and CPU are its own.

    python -m benchmarks.scale_probe register URL INSTANCES SERVICES [--ttl=SECONDS]
        registers (TTL default 30 s), prints READY, holds until stdin closes
    python -m benchmarks.scale_probe watch URL INSTANCES SERVICES SUBSCRIBERS CHANGES [--local] [--idle=SECONDS]

``watch``: subscriber k subscribes to service ``svc-<k mod SERVICES>`` and to the shared service ``hot``; it prints
one ``RESULT <json>`` line: RSS, CPU and wall time to the initial sync (every subscriber has seen its service's
full set), idle CPU over an idle window (default 3 s), and the fan-out of CHANGES single changes to ``hot``
(register() called → each subscriber's callback). ``--local`` registers the INSTANCES in this process first
(the memory backend).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

import psutil

from discovery.core.models import Instance, Snapshot
from discovery.registry.async_registry import AsyncRegistry
from discovery.registry.blocking import Registry

CONCURRENCY = 64


def instances(count: int, services: int) -> list[Instance]:
    """The instances, spread evenly over the services."""
    return [Instance(f"svc-{n % services}", f"i{n}", "127.0.0.1", 10000 + n % 50000) for n in range(count)]


async def register_all(registry: AsyncRegistry, wanted: list[Instance], ttl: float = 30.0) -> None:
    """Register with bounded concurrency."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(instance: Instance) -> None:
        async with gate:
            await registry.register(instance, ttl=ttl)

    await asyncio.gather(*(one(i) for i in wanted))


def register(url: str, count: int, services: int, ttl: float) -> None:
    """Hold ``count`` registrations until stdin closes."""

    async def main() -> None:
        async with await AsyncRegistry.connect(url) as registry:
            started = time.perf_counter()
            await register_all(registry, instances(count, services), ttl)
            print("READY", f"{time.perf_counter() - started:.3f}", flush=True)
            await asyncio.to_thread(sys.stdin.read)

    asyncio.run(main())


def watch(url: str, count: int, services: int, subscribers: int, changes: int, local: bool, idle: float) -> None:
    """Measure one process with ``subscribers`` watchers."""
    process = psutil.Process()
    rss_before = process.memory_info().rss
    registry = Registry.connect(url)
    if local:
        asyncio.run_coroutine_threadsafe(
            register_all(registry.async_registry, instances(count, services)), registry.loop
        ).result()
    per_service = count // services
    synced = threading.Event()
    remaining = [subscribers]
    hot_seen: list[dict[str, int]] = [{} for _ in range(subscribers)]
    hot_changed = threading.Condition()

    def make_callbacks(k: int) -> tuple[object, object]:
        done = [False]

        def on_service(snapshot: Snapshot) -> None:
            if not done[0] and len(snapshot) >= per_service:
                done[0] = True
                remaining[0] -= 1
                if remaining[0] == 0:
                    synced.set()

        def on_hot(snapshot: Snapshot) -> None:
            now = time.monotonic_ns()
            seen = hot_seen[k]
            fresh = [i for i in snapshot.ids() if i not in seen]
            if fresh:
                for ident in fresh:
                    seen[ident] = now
                with hot_changed:
                    hot_changed.notify_all()

        return on_service, on_hot

    cpu0, wall0 = process.cpu_times(), time.perf_counter()
    for k in range(subscribers):
        on_service, on_hot = make_callbacks(k)
        registry.subscribe(f"svc-{k % services}", on_service)  # type: ignore[arg-type]
        registry.subscribe("hot", on_hot)  # type: ignore[arg-type]
    if not synced.wait(600):
        raise TimeoutError(f"initial sync incomplete: {remaining[0]} subscribers waiting")
    wall1, cpu1 = time.perf_counter(), process.cpu_times()
    rss_synced = process.memory_info().rss
    time.sleep(idle)  # idle window: what keeping everything watched costs when nothing changes
    cpu2 = process.cpu_times()
    delays: list[float] = []
    completes: list[float] = []
    for c in range(changes):
        ident = f"h{c}"
        # From the call's start: this process's own watch can deliver before register() has returned.
        returned = time.monotonic_ns()
        registry.register(Instance("hot", ident, "127.0.0.1", 9000), ttl=30)
        with hot_changed:
            if not hot_changed.wait_for(lambda ident=ident: all(ident in s for s in hot_seen), 120):  # type: ignore[misc]
                raise TimeoutError(f"fan-out of {ident} incomplete")
        arrivals = [s[ident] for s in hot_seen]
        delays.extend((t - returned) / 1e9 for t in arrivals)
        completes.append((max(arrivals) - returned) / 1e9)
    result = {
        "rss_mb": rss_synced / 2**20,
        "rss_growth_mb": (rss_synced - rss_before) / 2**20,
        "sync_s": wall1 - wall0,
        "sync_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "idle_cpu_pct": 100 * ((cpu2.user + cpu2.system) - (cpu1.user + cpu1.system)) / idle,
        "fanout_delays_s": delays,
        "fanout_complete_s": completes,
    }
    print("RESULT", json.dumps(result), flush=True)
    registry.close()


def main(argv: list[str]) -> int:
    """Entry point."""
    if argv[0] == "register":
        ttl = next((float(a.split("=", 1)[1]) for a in argv if a.startswith("--ttl=")), 30.0)
        register(argv[1], int(argv[2]), int(argv[3]), ttl)
    else:
        idle = next((float(a.split("=", 1)[1]) for a in argv if a.startswith("--idle=")), 3.0)
        watch(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]), "--local" in argv, idle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
