"""Scenario 3: failure detection — ``kill -9`` of a registrant process → its instance gone at a watcher.

The registrant is ``discovery.testing.registrant`` (the conformance kit's victim process); the watcher is a
registry in the runner. Reported against the backend's declared bound for the TTL. The memory backend does
not cross processes: there the registrant is a registry in the runner that is aborted (closed without
deregistering, exactly what a crash leaves).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from benchmarks.context import MIN_TTL, RunContext
from benchmarks.report import Report, Row
from benchmarks.stats import summarize
from benchmarks.tools import OursTool, Target

SCENARIO = "3-detection"


class Follower:
    """Timestamps of the id sets a watcher delivers."""

    def __init__(self) -> None:
        self.ids: frozenset[str] = frozenset()
        self.changed = threading.Condition()
        self.events: list[tuple[int, frozenset[str]]] = []

    def __call__(self, ids: frozenset[str]) -> None:
        with self.changed:
            self.ids = ids
            self.events.append((time.monotonic_ns(), ids))
            self.changed.notify_all()

    def wait(self, predicate: object, timeout: float) -> int:
        """The time of the first event (the current one included) satisfying ``predicate``."""
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.ids), timeout):  # type: ignore[operator]
                raise TimeoutError(f"watcher never reached the expected set; last {sorted(self.ids)}")
            return self.events[-1][0] if self.events else time.monotonic_ns()


def _trial(target: Target, watcher: OursTool, follower: Follower, bound: float) -> float:
    if target.backend == "memory":
        victim = OursTool(target)
        victim.register("victim")
        follower.wait(lambda ids: "victim" in ids, 10)
        killed = time.monotonic_ns()
        victim.registry.close(deregister=False)
        gone = follower.wait(lambda ids: "victim" not in ids, bound + 10)
        return (gone - killed) / 1e9
    process = subprocess.Popen(
        [sys.executable, "-m", "discovery.testing.registrant", target.ours_url, "default", target.service, "1",
         f"{target.ttl:g}"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"registrant failed: {line!r}")
        (ident,) = line.split()[1:]
        follower.wait(lambda ids: ident in ids, 30)
        killed = time.monotonic_ns()
        os.kill(process.pid, signal.SIGKILL)
        gone = follower.wait(lambda ids: ident not in ids, bound + 30)
        return (gone - killed) / 1e9
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def run(context: RunContext, report: Report, backend: str) -> None:
    """Detection times of ours against the declared bound."""
    ttl = context.profile.detection_ttl or MIN_TTL[backend]
    target = context.target(backend, "victim", ttl=ttl)
    watcher = OursTool(target)
    try:
        bound = watcher.registry.detection_bound(ttl)
        follower = Follower()
        watcher.watch(follower)
        times = [_trial(target, watcher, follower, bound) for _ in range(context.profile.detection_trials)]
    except Exception as error:
        report.add(Row(SCENARIO, backend, "ours", "s", status="failed", note=f"{type(error).__name__}: {error}"))
        return
    finally:
        watcher.close()
    values = summarize(times)
    values["bound"] = bound
    values["ttl"] = ttl
    how = "abort() in-process" if backend == "memory" else "kill -9 of a registrant process"
    report.add(Row(SCENARIO, backend, "ours", "s", values, note=f"{how}; bound = declared detection bound"))
