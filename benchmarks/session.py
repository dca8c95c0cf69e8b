"""Session guarantees, measured (issue 15): ``python -m benchmarks.session [--count 1000] [--servers process]``.

For every backend (memory and real ZooKeeper, etcd, Consul started by the test harness) it prints one table:

* **read-your-writes**: a blocking ``Registry`` watches service ``svc``, then ``count`` times registers an instance
  and at once calls ``instances("svc")`` on the same registry; a miss is a lookup without the instance just
  registered. The same after ``update(weight=…)`` (a miss: the old weight) and ``deregister()`` (a miss: still
  there). ``register p50/p99`` is the latency of those ``register()`` calls (they include the wait for the watch).
* **monotonic**: how often a lookup or a watch's next snapshot carried an older revision than one handed out before.
* **close**: seconds from ``registry.close()`` until a ``for snapshot in watch`` loop in another thread ended, and
  until an ``async for`` over an ``AsyncWatch`` ended (the worst of ``rounds`` rounds).
* **two registrants**: the histories of an evicted and a newcomer registration with the same id, and what a
  fresh read holds at the end (the same on every backend is the goal).
* **failed connect**: threads left once ``Registry.connect`` to a port that accepts but never answers has raised.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator

from discovery import AsyncRegistry, DiscoveryError, Instance, Registry, Snapshot
from tests.harness import start_server
from tests.harness.specs import ZK_TICK_MS

KINDS = ("memory", "zookeeper", "etcd", "consul")


def scoped(kind: str, base: str) -> str:
    unique = f"session-{uuid.uuid4().hex[:10]}"
    if kind == "memory":
        return f"memory:///{unique}"
    if kind == "zookeeper":
        return f"{base}/{unique}?session_timeout=4&tick={ZK_TICK_MS / 1000}"
    if kind == "etcd":
        return f"{base}/{unique}?ttl=4"
    return f"{base}/{unique}"


def read_your_writes(url: str, count: int) -> dict[str, object]:
    misses = {"register": 0, "update": 0, "deregister": 0}
    older = 0
    latencies: list[float] = []
    with Registry.connect(url) as registry, registry.watch("svc") as watch:
        watch.next(15)
        newest = 0

        def check(snapshot: Snapshot) -> None:
            nonlocal newest, older
            if snapshot.revision < newest:
                older += 1
            newest = max(newest, snapshot.revision)

        for n in range(count):
            instance = Instance("svc", f"i{n}", "127.0.0.1", 1024 + n % 60000)
            started = time.perf_counter()
            registration = registry.register(instance)
            latencies.append(time.perf_counter() - started)
            check(registry.snapshot("svc"))
            if instance not in registry.instances("svc"):
                misses["register"] += 1
            if n % 10 == 0:  # every tenth: an update and a deregistration too
                updated = registration.update(weight=2)
                check(registry.snapshot("svc"))
                if updated not in registry.instances("svc"):
                    misses["update"] += 1
                registration.deregister()
                if any(i.id == instance.id for i in registry.instances("svc", statuses=None)):
                    misses["deregister"] += 1
        with contextlib.suppress(TimeoutError):
            while True:
                check(watch.next(0.2))
    latencies.sort()
    return {
        "misses": misses,
        "older": older,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "writes": {"register": count, "update": len(range(0, count, 10)), "deregister": len(range(0, count, 10))},
    }


def close_times(url: str, rounds: int) -> tuple[float, float]:
    worst_sync = worst_async = 0.0
    for _ in range(rounds):
        registry = Registry.connect(url)
        registry.register(Instance("closing", "c1", "127.0.0.1", 1))
        watch = registry.watch("closing")
        watch.until(lambda s: len(s) == 1, 15)
        ended = threading.Event()
        threading.Thread(target=lambda w=watch, e=ended: (list(w), e.set()), daemon=True).start()
        started = time.perf_counter()
        registry.close()
        ended.wait(30)
        worst_sync = max(worst_sync, time.perf_counter() - started)
        worst_async = max(worst_async, asyncio.run(_async_close_time(url)))
    return worst_sync, worst_async


async def _async_close_time(url: str) -> float:
    registry = await AsyncRegistry.connect(url)
    await registry.register(Instance("closing", "c2", "127.0.0.1", 2))
    watch = registry.watch("closing")
    await watch.until(lambda s: len(s) >= 1, 15)

    async def drain() -> None:
        async for _ in watch:
            pass

    consumer = asyncio.create_task(drain())
    await asyncio.sleep(0)
    started = time.perf_counter()
    closing = asyncio.create_task(registry.close())
    await asyncio.wait_for(consumer, 30)
    elapsed = time.perf_counter() - started
    await closing
    return elapsed


def two_registrants(url: str, bound: float) -> tuple[str, str, str]:
    with Registry.connect(url) as first, Registry.connect(url) as second, Registry.connect(url) as reader:
        old = Instance("owned", "o1", "127.0.0.1", 1, labels={"gen": "a"})
        new = Instance("owned", "o1", "127.0.0.1", 2, labels={"gen": "b"})
        a = first.register(old)
        b = second.register(new)
        with contextlib.suppress(TimeoutError):
            a.wait_for(a.state.LOST, bound)
        with contextlib.suppress(DiscoveryError):
            a.update(weight=3)
        a.deregister()
        first.close()
        held = reader.instances("owned")
        b.deregister()
        end = ",".join(i.labels["gen"] for i in held) or "-"
        return (
            f"{'>'.join(s.value for s in a.history)} ({a.lost_reason})",
            ">".join(s.value for s in b.history),
            f"{end}, then {len(reader.instances('owned'))}",
        )


def failed_connect_threads(scheme: str) -> int:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        before = set(threading.enumerate())
        with contextlib.suppress(DiscoveryError):
            Registry.connect(f"{scheme}://127.0.0.1:{port}", timeout=1.0)
        deadline = time.monotonic() + 5
        while set(threading.enumerate()) - before and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(set(threading.enumerate()) - before)


@contextlib.contextmanager
def servers(kinds: tuple[str, ...], provider: str) -> Iterator[dict[str, str]]:
    with contextlib.ExitStack() as stack:
        urls = {"memory": "memory://"}
        for kind in kinds:
            if kind != "memory":
                urls[kind] = stack.enter_context(start_server(kind, provider)).url
        yield urls


def main() -> None:
    """Run every measurement on every backend and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--servers", default="process", choices=("process", "container"))
    parser.add_argument("--backend", default=",".join(KINDS))
    args = parser.parse_args()
    kinds = tuple(args.backend.split(","))
    print("| backend | register misses | update misses | deregister misses | older snapshots | register p50 / p99 ms"
          " | close: sync loop / async loop ended (worst) | evicted history | newcomer history | end state"
          " | threads left by a failed connect |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with servers(kinds, args.servers) as urls:
        for kind in kinds:
            ryw = read_your_writes(scoped(kind, urls[kind]), args.count)
            sync_close, async_close = close_times(scoped(kind, urls[kind]), args.rounds)
            evicted, newcomer, end = two_registrants(scoped(kind, urls[kind]), 10.0)
            threads = "n/a (in-process)" if kind == "memory" else str(failed_connect_threads(kind))
            misses, writes = ryw["misses"], ryw["writes"]
            assert isinstance(misses, dict) and isinstance(writes, dict)
            print(
                f"| {kind} | {misses['register']} of {writes['register']} | {misses['update']} of {writes['update']}"
                f" | {misses['deregister']} of {writes['deregister']} | {ryw['older']}"
                f" | {ryw['p50_ms']:.2f} / {ryw['p99_ms']:.2f} | {sync_close:.3f} s / {async_close:.3f} s"
                f" | {evicted} | {newcomer} | {end} | {threads} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
