"""Scenario 1: watch propagation — ``register()`` returning in writer A → the new set delivered in watcher B.

A and B are separate processes of the same tool (this library, the raw client, tooz, Curator), so every tool
is measured the same way. ``p50``/``p99`` are from ``register()`` *returning* (the issue's definition; it can be
negative: the server notifies B while its answer to A is still on the way), ``call_p50``/``call_p99`` from the
call's *start* (time to visibility, always positive; ratios and plots use these). Memory is in-process only
(its store does not cross processes): A and B are two registries of one store in the runner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from benchmarks.context import RunContext
from benchmarks.procs import Worker, WorkerError
from benchmarks.report import Report, Row
from benchmarks.stats import summarize
from benchmarks.tools import OursTool

SCENARIO = "1-propagation"
PACE_S = 0.3  # between trials: lets Consul's watch rate limit (4 queries/s) refill, as between real changes
#: Trials each pair makes first and does not count: a pair's first changes pay one-time costs (first calls of each
#: code path in both processes), which would otherwise land in its p99.
WARM_UP_TRIALS = 3


Delays = list[tuple[float, float]]  # (from the call's return, from the call's start), seconds


def _pair(writer: Worker, watcher: Worker, trials: int) -> Delays:
    try:
        writer.expect("READY", 90)
        watcher.expect("READY", 90)
        delays = []
        for n in range(-WARM_UP_TRIALS, trials):  # the first few are not counted (see WARM_UP_TRIALS)
            ident = f"p{n}" if n >= 0 else f"w{-n}"
            writer.send(f"REG {ident}")
            done = writer.expect("OK", 30, ident=ident)
            seen = watcher.expect("ADD", 30, ident=ident)
            if n >= 0:
                delays.append(((int(seen[2]) - int(done[3])) / 1e9, (int(seen[2]) - int(done[2])) / 1e9))
            time.sleep(PACE_S)
        return delays
    finally:
        writer.close()
        watcher.close()


def _memory(context: RunContext, trials: int) -> Delays:
    target = context.target("memory", "prop")
    writer, watcher = OursTool(target), OursTool(target)
    seen: dict[str, int] = {}
    arrived = threading.Condition()

    def on_ids(ids: frozenset[str]) -> None:
        now = time.monotonic_ns()
        with arrived:
            for ident in ids - seen.keys():
                seen[ident] = now
            arrived.notify_all()

    try:
        watcher.watch(on_ids)
        delays = []
        for n in range(trials):
            ident = f"p{n}"
            called = time.monotonic_ns()
            writer.register(ident)
            returned = time.monotonic_ns()
            with arrived:
                if not arrived.wait_for(lambda ident=ident: ident in seen, 10):  # type: ignore[misc]
                    raise TimeoutError(f"memory watcher never saw {ident}")
            delays.append(((seen[ident] - returned) / 1e9, (seen[ident] - called) / 1e9))
        return delays
    finally:
        writer.close()
        watcher.close()


def _row(report: Report, backend: str, tool: str, measure: Callable[[], Delays], note: str = "") -> None:
    try:
        delays = measure()
    except (WorkerError, OSError, TimeoutError) as error:
        report.add(Row(SCENARIO, backend, tool, "ms", status="failed", note=str(error).splitlines()[0][:200]))
        return
    values = summarize([after for after, _ in delays], 1e3)
    from_call = summarize([whole for _, whole in delays], 1e3)
    values["call_p50"], values["call_p99"] = from_call["p50"], from_call["p99"]
    report.add(Row(SCENARIO, backend, tool, "ms", values, note=note, samples=[whole * 1e3 for _, whole in delays]))


def run(context: RunContext, report: Report, backend: str) -> None:
    """Measure ours and every anchor of ``backend``."""
    trials = context.profile.propagation_trials
    if backend == "memory":
        _row(report, backend, "ours", lambda: _memory(context, trials), "in-process: the memory store is per process")
        return
    target = context.target(backend, "prop")
    _row(report, backend, "ours", lambda: _pair(
        context.python_worker("write", "ours", target), context.python_worker("watch", "ours", target), trials))
    raw = context.target(backend, "prop")
    raw_name = {"zookeeper": "kazoo ChildrenWatch", "etcd": "aetcd watch", "consul": "py-consul blocking query"}
    if backend == "zookeeper":
        # The same-work anchor first: names and records, as our snapshot carries. ChildrenWatch alone delivers
        # names only (no address, no port), which no client can call.
        same = context.target(backend, "prop")
        _row(report, backend, "kazoo ChildrenWatch + get", lambda: _pair(
            context.python_worker("write", "raw", same), context.python_worker("watch", "raw-read", same), trials),
            "the same work: each new child's record read")
    _row(report, backend, raw_name[backend], lambda: _pair(
        context.python_worker("write", "raw", raw), context.python_worker("watch", "raw", raw), trials),
        "names only, no records" if backend == "zookeeper" else "")
    if not context.profile.anchors:
        return
    tooz = context.target(backend, "prop")
    version = "tooz 8.1.0" if backend == "consul" else "tooz 9.x"
    if context.tooz_python(backend) is None:
        report.add(Row(SCENARIO, backend, version, "ms", status="skipped",
                       note="anchor venvs missing: bash benchmarks/setup_anchors.sh"))
    else:
        _row(report, backend, version, lambda: _pair(
            context.tooz_worker("write", tooz), context.tooz_worker("watch", tooz), trials),
            "run_watchers() polled every 10 ms")
    if backend == "zookeeper":
        curator = context.target(backend, "prop")
        try:
            context.curator_classpath()
        except (FileNotFoundError, OSError) as error:
            report.add(Row(SCENARIO, backend, "curator ServiceCache", "ms", status="skipped", note=str(error)))
            return
        _row(report, backend, "curator ServiceCache", lambda: _pair(
            context.curator_worker("write", curator), context.curator_worker("watch", curator), trials))
