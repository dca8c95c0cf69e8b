"""What the blocking ``Registry`` costs per call over ``AsyncRegistry``, call by call, on one backend.

    python -m benchmarks.facade [--url memory:///facade] [--count 2000] [--threads 1]

For each operation it times ``count`` calls made through the blocking ``Registry`` (from ``--threads`` caller
threads) and the same calls awaited one by one on an ``AsyncRegistry`` (one task: no thread involved), and prints
p50/p99 in µs and the difference of the p50s, which is what the facade adds. Instances are built before the
clock starts, so only the call is timed. It uses the public API only, so it measures an older checkout the same
way (``git archive <commit> | tar -x -C /tmp/old``; ``PYTHONPATH=/tmp/old:/tmp/old/backends python -m
benchmarks.facade``).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from collections.abc import Callable

from benchmarks.stats import percentile
from discovery import AsyncRegistry, Instance, Registry, Status

OPERATIONS = ("register", "update", "instances (unwatched)", "services", "deregister")


def _instances(service: str, count: int) -> list[Instance]:
    return [Instance(service, f"i{n}", "127.0.0.1", 8080) for n in range(count)]


def blocking(url: str, count: int, threads: int) -> dict[str, list[float]]:
    """Per-operation latencies (s) through the blocking facade, ``threads`` callers sharing the calls."""
    timings: dict[str, list[float]] = {name: [] for name in OPERATIONS}
    service = f"facade-{uuid.uuid4().hex[:8]}"
    wanted = _instances(service, count)
    lock = threading.Lock()
    with Registry.connect(url) as registry:
        registrations: list[object] = [None] * count

        def run_all(name: str, call: Callable[[int], object]) -> None:
            def worker(first: int) -> None:
                mine: list[float] = []
                for n in range(first, count, threads):
                    t0 = time.perf_counter()
                    call(n)
                    mine.append(time.perf_counter() - t0)
                with lock:
                    timings[name].extend(mine)

            callers = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join()

        def register(n: int) -> None:
            registrations[n] = registry.register(wanted[n], ttl=30)

        run_all("register", register)
        run_all("update", lambda n: registrations[n].update(status=Status.DRAINING))  # type: ignore[attr-defined]
        run_all("instances (unwatched)", lambda n: registry.instances(service, statuses=None))
        run_all("services", lambda n: registry.services())
        run_all("deregister", lambda n: registrations[n].deregister())  # type: ignore[attr-defined]
    return timings


async def awaited(url: str, count: int) -> dict[str, list[float]]:
    """The same calls awaited one after another on an ``AsyncRegistry``."""
    timings: dict[str, list[float]] = {name: [] for name in OPERATIONS}
    service = f"facade-{uuid.uuid4().hex[:8]}"
    wanted = _instances(service, count)
    async with AsyncRegistry.connect(url) as registry:
        registrations = []
        for instance in wanted:
            t0 = time.perf_counter()
            registrations.append(await registry.register(instance, ttl=30))
            timings["register"].append(time.perf_counter() - t0)
        for registration in registrations:
            t0 = time.perf_counter()
            await registration.update(status=Status.DRAINING)
            timings["update"].append(time.perf_counter() - t0)
        for _ in range(count):
            t0 = time.perf_counter()
            await registry.instances(service, statuses=None)
            timings["instances (unwatched)"].append(time.perf_counter() - t0)
        for _ in range(count):
            t0 = time.perf_counter()
            await registry.services()
            timings["services"].append(time.perf_counter() - t0)
        for registration in registrations:
            t0 = time.perf_counter()
            await registration.deregister()
            timings["deregister"].append(time.perf_counter() - t0)
    return timings


def main(argv: list[str] | None = None) -> int:
    """Run both, print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.facade", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="memory:///facade")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args(argv)
    sync_times = blocking(arguments.url, arguments.count, arguments.threads)
    async_times = asyncio.run(awaited(arguments.url, arguments.count))
    print(f"{arguments.url}: {arguments.count} calls per operation, blocking from {arguments.threads} thread(s)\n")
    print("| operation | Registry p50 µs | Registry p99 µs | AsyncRegistry p50 µs | AsyncRegistry p99 µs | "
          "facade adds (p50) µs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in OPERATIONS:
        s50, s99 = percentile(sync_times[name], 50) * 1e6, percentile(sync_times[name], 99) * 1e6
        a50, a99 = percentile(async_times[name], 50) * 1e6, percentile(async_times[name], 99) * 1e6
        print(f"| {name} | {s50:.1f} | {s99:.1f} | {a50:.1f} | {a99:.1f} | {s50 - a50:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
