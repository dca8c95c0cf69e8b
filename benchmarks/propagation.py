"""Scenario 1: watch propagation — ``register()`` returning in writer A → the new set delivered in watcher B.

A and B are separate processes of the same tool (this library, the raw client, tooz, Curator), so every tool
is measured the same way. ``p50``/``p99`` are from ``register()`` *returning* (the issue's definition; it can be
negative: the server notifies B while its answer to A is still on the way), ``call_p50``/``call_p99`` from the
call's *start* (time to visibility, always positive; ratios and plots use these). Memory is in-process only
(its store does not cross processes): A and B are two registries of one store in the runner. All pairs of a backend
run at once and take turns, one trial each (see :func:`_interleaved`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass
class _Pair:
    """One tool's writer and watcher processes, and what they measured."""

    tool: str
    note: str
    start: Callable[[], tuple[Worker, Worker]]
    workers: tuple[Worker, Worker] | None = None
    delays: Delays = field(default_factory=list)
    error: str | None = None

    def fail(self, error: BaseException) -> None:
        self.error = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        self.close()

    def close(self) -> None:
        workers, self.workers = self.workers, None
        for worker in workers or ():
            worker.close()


def _trial(pair: _Pair, ident: str) -> tuple[float, float]:
    assert pair.workers is not None
    writer, watcher = pair.workers
    writer.send(f"REG {ident}")
    done = writer.expect("OK", 30, ident=ident)
    seen = watcher.expect("ADD", 30, ident=ident)
    return (int(seen[2]) - int(done[3])) / 1e9, (int(seen[2]) - int(done[2])) / 1e9


def _interleaved(pairs: list[_Pair], trials: int) -> None:
    """Run every pair's trials in turns (trial n of each pair, the order rotated each turn), so that a drift of the
    machine or the server during the run (a JIT warming up, another process) falls on every tool alike; trials
    never overlap. The first :data:`WARM_UP_TRIALS` turns are not counted."""
    try:
        for pair in pairs:
            try:
                pair.workers = pair.start()
            except (WorkerError, OSError, TimeoutError, FileNotFoundError) as error:
                pair.fail(error)
        for pair in pairs:
            if pair.workers is not None:
                try:
                    for worker in pair.workers:
                        worker.expect("READY", 90)
                except (WorkerError, OSError, TimeoutError) as error:
                    pair.fail(error)
        for n in range(-WARM_UP_TRIALS, trials):
            turn = n % len(pairs)
            for pair in pairs[turn:] + pairs[:turn]:
                if pair.workers is None:
                    continue
                try:
                    delay = _trial(pair, f"p{n}" if n >= 0 else f"w{-n}")
                except (WorkerError, OSError, TimeoutError) as error:
                    pair.fail(error)
                    continue
                if n >= 0:
                    pair.delays.append(delay)
                time.sleep(PACE_S)
    finally:
        for pair in pairs:
            pair.close()


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


def _row(report: Report, backend: str, tool: str, delays: Delays, note: str = "") -> None:
    values = summarize([after for after, _ in delays], 1e3)
    from_call = summarize([whole for _, whole in delays], 1e3)
    values["call_p50"], values["call_p99"] = from_call["p50"], from_call["p99"]
    report.add(Row(SCENARIO, backend, tool, "ms", values, note=note, samples=[whole * 1e3 for _, whole in delays]))


def _report(report: Report, backend: str, pair: _Pair) -> None:
    if pair.error is not None:
        report.add(Row(SCENARIO, backend, pair.tool, "ms", status="failed", note=pair.error))
    else:
        _row(report, backend, pair.tool, pair.delays, pair.note)


def run(context: RunContext, report: Report, backend: str) -> None:
    """Measure ours and every anchor of ``backend``, their trials interleaved (see :func:`_interleaved`)."""
    trials = context.profile.propagation_trials
    if backend == "memory":
        try:
            delays = _memory(context, trials)
        except (WorkerError, OSError, TimeoutError) as error:
            report.add(Row(SCENARIO, backend, "ours", "ms", status="failed", note=str(error).splitlines()[0][:200]))
            return
        _row(report, backend, "ours", delays, "in-process: the memory store is per process")
        return

    def python_pair(writer: str, watcher: str) -> Callable[[], tuple[Worker, Worker]]:
        target = context.target(backend, "prop")
        return lambda: (context.python_worker("write", writer, target), context.python_worker("watch", watcher, target))

    pairs = [_Pair("ours", "", python_pair("ours", "ours"))]
    raw_name = {"zookeeper": "kazoo ChildrenWatch", "etcd": "aetcd watch", "consul": "py-consul blocking query"}
    if backend == "zookeeper":
        # The same-work anchor: names and records, as our snapshot carries. ChildrenWatch alone delivers names
        # only (no address, no port), which no client can call.
        pairs.append(_Pair("kazoo ChildrenWatch + get", "the same work: each new child's record read",
                           python_pair("raw", "raw-read")))
    pairs.append(_Pair(raw_name[backend], "names only, no records" if backend == "zookeeper" else "",
                       python_pair("raw", "raw")))
    skipped: list[Row] = []
    if context.profile.anchors:
        version = "tooz 8.1.0" if backend == "consul" else "tooz 9.x"
        if context.tooz_python(backend) is None:
            skipped.append(Row(SCENARIO, backend, version, "ms", status="skipped",
                               note="anchor venvs missing: bash benchmarks/setup_anchors.sh"))
        else:
            tooz = context.target(backend, "prop")
            pairs.append(_Pair(version, "run_watchers() polled every 10 ms",
                               lambda: (context.tooz_worker("write", tooz), context.tooz_worker("watch", tooz))))
        if backend == "zookeeper":
            curator = context.target(backend, "prop")
            try:
                context.curator_classpath()
            except (FileNotFoundError, OSError) as error:
                skipped.append(Row(SCENARIO, backend, "curator ServiceCache", "ms", status="skipped", note=str(error)))
            else:
                pairs.append(_Pair("curator ServiceCache", "", lambda: (
                    context.curator_worker("write", curator), context.curator_worker("watch", curator))))
    _interleaved(pairs, trials)
    for pair in pairs:
        _report(report, backend, pair)
    for row in skipped:
        report.add(row)
