"""Scenario 5: lookups. Cached: a watched service's instances + a round-robin pick, timed in batches (µs per
lookup). Uncached: one read of an unwatched service (ms). The service has 10 instances.

Anchors: the raw client with the list a hand-written integration keeps from its watch callback (cached), and its
plain read (uncached); on ZooKeeper also Curator's ``ServiceCache.getInstances()`` + pick (Java, JIT-compiled).
"""

from __future__ import annotations

import itertools
import threading
import time

from benchmarks.context import RunContext
from benchmarks.procs import WorkerError
from benchmarks.report import Report, Row
from benchmarks.stats import summarize
from benchmarks.tools import OursTool, make_tool
from discovery.client.balancers import RoundRobin

INSTANCES = 10


def _batches(lookup: object, batches: int, size: int) -> list[float]:
    per_op = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(size):
            lookup()  # type: ignore[operator]
        per_op.append((time.perf_counter() - t0) / size)
    return per_op


def _wait_for(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("the watch never delivered every instance")
        time.sleep(0.01)


def _cached(context: RunContext, report: Report, backend: str) -> None:
    profile = context.profile
    target = context.target(backend, "lookup")
    writer = make_tool("ours", target)
    try:
        for n in range(INSTANCES):
            writer.register(f"l{n}")
        ours = OursTool(target)
        ready = threading.Event()
        ours.watch(lambda ids: ready.set() if len(ids) == INSTANCES else None)
        ready.wait(30)
        balancer = RoundRobin()
        registry = ours.registry
        per_op = _batches(lambda: balancer.pick(registry.instances("lookup")), profile.lookup_batches,
                          profile.lookup_batch_size)
        report.add(Row("5-cached-lookup", backend, "ours", "µs", summarize(per_op, 1e6),
                       note="Registry.instances() + RoundRobin.pick, per lookup"))
        ours.close()
        assert isinstance(writer, OursTool)
        per_read = []
        for _ in range(profile.uncached_reads):  # the writer's registry does not watch: each lookup is a read
            t0 = time.perf_counter()
            found = writer.registry.instances("lookup")
            per_read.append(time.perf_counter() - t0)
        assert len(found) == INSTANCES, found
        report.add(Row("5-uncached-lookup", backend, "ours", "ms", summarize(per_read, 1e3),
                       note="Registry.instances() of an unwatched service: one backend read"))
    finally:
        writer.close()


def _raw(context: RunContext, report: Report, backend: str) -> None:
    profile = context.profile
    target = context.target(backend, "lookup")
    raw = make_tool("raw", target)
    try:
        for n in range(INSTANCES):
            raw.register(f"l{n}")
        latest: list[tuple[str, ...]] = [()]
        raw.watch(lambda ids: latest.__setitem__(0, tuple(sorted(ids))))
        _wait_for(lambda: len(latest[0]) == INSTANCES, 30)
        counter = itertools.count()

        def pick() -> str:
            instances = latest[0]
            return instances[next(counter) % len(instances)]

        per_op = _batches(pick, profile.lookup_batches, profile.lookup_batch_size)
        report.add(Row("5-cached-lookup", backend, f"{raw.name} + hand-kept list", "µs", summarize(per_op, 1e6),
                       note="the id list the watch callback keeps, round-robin"))
        per_read = []
        for _ in range(profile.uncached_reads):
            t0 = time.perf_counter()
            found = raw.read()
            per_read.append(time.perf_counter() - t0)
        assert len(found) == INSTANCES, found
        report.add(Row("5-uncached-lookup", backend, f"{raw.name} read", "ms", summarize(per_read, 1e3)))
    finally:
        raw.close()


def _curator(context: RunContext, report: Report) -> None:
    profile = context.profile
    target = context.target("zookeeper", "lookup")
    writer = context.curator_worker("write", target)
    try:
        writer.expect("READY", 90)
        for n in range(INSTANCES):
            writer.send(f"REG l{n}")
            writer.expect("OK", 30, ident=f"l{n}")
        looker = context.curator_worker("lookup", target, str(profile.lookup_batches), str(profile.lookup_batch_size))
        per_op = []
        try:
            for _ in range(profile.lookup_batches):
                per_op.append(float(looker.expect("BATCH", 120)[1]) / 1e9)
        finally:
            looker.close()
        report.add(Row("5-cached-lookup", "zookeeper", "curator ServiceCache", "µs", summarize(per_op, 1e6),
                       note="getInstances() + round-robin, Java"))
    finally:
        writer.close()


def run(context: RunContext, report: Report, backend: str) -> None:
    """Cached and uncached lookups of ours and the anchors."""
    for part in (_cached, _raw):
        if part is _raw and backend == "memory":
            continue
        try:
            part(context, report, backend)
        except Exception as error:
            tool = "ours" if part is _cached else "raw"
            for scenario in ("5-cached-lookup", "5-uncached-lookup"):
                report.add(Row(scenario, backend, tool, "", status="failed", note=f"{type(error).__name__}: {error}"))
    if backend == "zookeeper" and context.profile.anchors:
        try:
            _curator(context, report)
        except (WorkerError, FileNotFoundError, OSError) as error:
            report.add(Row("5-cached-lookup", backend, "curator ServiceCache", "µs", status="failed",
                           note=str(error).splitlines()[0]))
