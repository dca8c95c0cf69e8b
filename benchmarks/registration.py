"""Scenario 2: registration latency and throughput, 1 and 16 concurrent registrants on one client.

Each registrant is a thread calling the blocking ``register`` in turn: this library's ``Registry`` and the raw
tools are all blocking clients (see :mod:`benchmarks.tools`). A second row for ours uses :class:`AsyncRegistry`
with one asyncio task per registrant, which separates the blocking facade's cost; a third (real backends) the same
with ``follow_records=False``, which separates the cost of following one's own records (a watch of each service
registered in, which reads every instance of it once). The TTL is long (30 s) so that
keep-alive traffic of the registrations made so far does not compete with the writes being timed. Every tool
first makes a fifth of its count (at least 20) registrations that are not timed, on the same client: the server's
JIT and a client's first calls would otherwise count against whichever tool runs first. Then the tools take turns
(:func:`run`), so that a drift during the run does not favour one of them.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

from benchmarks.context import RunContext
from benchmarks.report import Report, Row
from benchmarks.stats import summarize
from benchmarks.tools import Target, Tool, make_tool
from discovery.core.models import Instance
from discovery.registry.async_registry import AsyncRegistry

TTL = 30.0
RAW_NAMES = {"zookeeper": "kazoo create", "etcd": "aetcd put (shared lease)", "consul": "py-consul register+pass"}


def _warm_up_count(count: int) -> int:
    """Registrations made and not timed before a tool's timed ones: the server's JIT (ZooKeeper is a JVM) and the
    client's first calls otherwise count against whichever tool runs first (ours), by up to 40 % in a run."""
    return max(20, count // 5)


def _timed(tool: Tool, count: int, registrants: int, prefix: str = "r") -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def registrant(worker: int) -> None:
        mine = []
        try:
            for n in range(worker, count, registrants):
                t0 = time.perf_counter()
                tool.register(f"{prefix}{n}")
                mine.append(time.perf_counter() - t0)
        except BaseException as error:  # reported after join
            errors.append(error)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=registrant, args=(w,)) for w in range(registrants)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return latencies, wall


async def _timed_async(
    target: Target, count: int, registrants: int, follow_records: bool = True
) -> tuple[list[float], float]:
    """The same with :class:`AsyncRegistry` and asyncio tasks: no thread hop per call."""
    async with await AsyncRegistry.connect(target.ours_url, follow_records=follow_records) as registry:
        await _timed_on(registry, target, _warm_up_count(count), registrants, "w")
        return await _timed_on(registry, target, count, registrants, "r")


async def _timed_on(
    registry: AsyncRegistry, target: Target, count: int, registrants: int, prefix: str
) -> tuple[list[float], float]:
    latencies: list[float] = []

    async def registrant(worker: int) -> None:
        for n in range(worker, count, registrants):
            t0 = time.perf_counter()
            await registry.register(Instance(target.service, f"{prefix}{n}", "127.0.0.1", 8080), ttl=target.ttl)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(registrant(w) for w in range(registrants)))
    return latencies, time.perf_counter() - started


def _measure(target: Target, name: str, count: int, registrants: int) -> tuple[list[float], float]:
    """One tool's warm-up and timed run on a client of its own, in a service of its own (closed after)."""
    if name.startswith("async"):
        return asyncio.run(_timed_async(target, count, registrants, follow_records=name == "async"))
    tool = make_tool(name, target)
    try:
        _timed(tool, _warm_up_count(count), registrants, prefix="w")
        return _timed(tool, count, registrants)
    finally:
        tool.close()


LABELS = {"ours": "ours", "async": "ours (AsyncRegistry)",
          "async-unfollowed": "ours (AsyncRegistry, follow_records=False)"}
NOTES = {"async": "asyncio tasks, no facade thread hop",
         "async-unfollowed": "asyncio tasks, no facade thread hop, own records not followed"}


def run(context: RunContext, report: Report, backend: str) -> None:
    """Both registrant counts, ours and the raw client. The tools take turns, ``register_rounds`` turns, each turn
    one run of every tool (the order rotated; a run is a fresh client in a fresh service, warmed up, then timed);
    a tool's rate is the median of its runs', its latencies those of all its runs. A drift of the machine or the
    server during the scenario then falls on every tool alike."""
    names = ["ours", "async"] if backend == "memory" else ["ours", "async", "async-unfollowed", "raw"]
    rounds = context.profile.register_rounds
    for scenario, registrants, count in (
        ("2-register-1", 1, context.profile.register_count),
        ("2-register-16", 16, context.profile.register_concurrent_count),
    ):
        failed: dict[str, str] = {}
        latencies: dict[str, list[float]] = {name: [] for name in names}
        rates: dict[str, list[float]] = {name: [] for name in names}
        for turn in range(rounds):
            for name in names[turn % len(names):] + names[:turn % len(names)]:
                if name in failed:
                    continue
                try:
                    timed, wall = _measure(context.target(backend, "reg", ttl=TTL), name, count, registrants)
                except Exception as error:
                    failed[name] = f"{type(error).__name__}: {error}"[:200]
                    continue
                latencies[name].extend(timed)
                rates[name].append(count / wall)
        for name in names:
            label = LABELS.get(name) or RAW_NAMES[backend]
            if name in failed:
                report.add(Row(scenario, backend, label, "ms", status="failed", note=failed[name]))
                continue
            values = summarize(latencies[name], 1e3)
            values["rate"] = statistics.median(rates[name])
            note = NOTES.get(name, "rate = registrations/s")
            if rounds > 1:
                note += "; rate = median of " + ", ".join(f"{rate:.0f}" for rate in rates[name])
            report.add(Row(scenario, backend, label, "ms", values, note=note))
