"""Which of the library's files one watch event runs through, traced on a real server.

    python -m benchmarks.watch_path [--backend zookeeper,etcd,consul] [--servers process|container] [--rounds 3]

A second process registers an instance; this process watches the service and records, with a profile hook on
every thread, each library function (``discovery/`` and ``backends/``) that runs from just before that
registration until the consumer has the snapshot that contains it. Three consumers are traced: an
``AsyncRegistry.subscribe`` callback, ``async for snapshot in registry.watch(...)`` and the blocking
``for snapshot in Registry.watch(...)``. A file counts if it ran in every round (background timers that happen to
fire in one round drop out). Only the public API is used, so the script runs unchanged on older checkouts:
run it from the checkout to measure (``cd CHECKOUT && python -m benchmarks.watch_path``).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from discovery import AsyncRegistry, Registry, Snapshot
from tests.harness import start_server

ROOT = Path.cwd().resolve()
LIBRARY_DIRS = (ROOT / "discovery", ROOT / "backends")

#: The registering process: one registration per line read from stdin, "OK" printed after each.
WRITER = """
import asyncio, sys
from discovery import AsyncRegistry, Instance

async def main():
    async with await AsyncRegistry.connect(sys.argv[1]) as registry:
        print("READY", flush=True)
        held = []
        while line := await asyncio.to_thread(sys.stdin.readline):
            held.append(await registry.register(Instance(sys.argv[2], line.strip(), "127.0.0.1", 9000), ttl=30))
            print("OK", flush=True)

asyncio.run(main())
"""


#: One round: the library functions that ran, by file; how many library calls ran; the asyncio tasks they ran in.
Trace = tuple[dict[str, set[str]], int, set[str]]


class Recorder:
    """A profile hook that, while :attr:`on`, notes each library function called (file -> function names)."""

    def __init__(self) -> None:
        self.on = False
        self.calls: dict[str, set[str]] = {}
        self.count = 0
        self.tasks: set[str] = set()
        self._lock = threading.Lock()

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        """``sys.setprofile`` hook."""
        if not self.on or event != "call":
            return
        path = Path(frame.f_code.co_filename)
        if not any(path.is_relative_to(directory) for directory in LIBRARY_DIRS):
            return
        try:
            task = asyncio.current_task()
        except RuntimeError:  # a thread without an event loop (kazoo's)
            task = None
        with self._lock:
            self.calls.setdefault(str(path.relative_to(ROOT)), set()).add(frame.f_code.co_qualname)
            self.count += 1
            if task is not None:
                self.tasks.add(task.get_coro().__qualname__)  # type: ignore[union-attr]

    def take(self) -> Trace:
        """What was recorded since the last call."""
        with self._lock:
            calls, self.calls = self.calls, {}
            count, self.count = self.count, 0
            tasks, self.tasks = self.tasks, set()
        return calls, count, tasks


class Writer:
    """The registering process."""

    def __init__(self, url: str, service: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", WRITER, url, service], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._expect("READY")

    def _expect(self, word: str) -> None:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if line.strip() != word:
            raise RuntimeError(f"writer said {line!r}, expected {word}")

    def register(self, ident: str) -> None:
        """Ask the writer to register ``ident`` (returns at once)."""
        assert self._process.stdin is not None
        self._process.stdin.write(ident + "\n")
        self._process.stdin.flush()

    def wait_done(self) -> None:
        """Wait for the writer's confirmation."""
        self._expect("OK")

    def close(self) -> None:
        """End the writer (its registry deregisters)."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(60)


def _settle() -> None:
    time.sleep(0.5)  # let the first snapshot's own work (initial list, connection set-up) finish first


def trace_async(url: str, recorder: Recorder, rounds: int, mode: str) -> list[Trace]:
    """Rounds of one async consumer (``subscribe`` or ``async-for``)."""

    async def main() -> list[Trace]:
        service = f"path-{uuid.uuid4().hex[:8]}"
        writer = await asyncio.to_thread(Writer, url, service)
        traces = []
        try:
            async with await AsyncRegistry.connect(url) as registry:
                arrived: asyncio.Queue[Snapshot] = asyncio.Queue()

                def on_snapshot(snapshot: Snapshot) -> None:
                    recorder.on = False
                    arrived.put_nowait(snapshot)

                if mode == "subscribe":
                    unsubscribe = registry.subscribe(service, on_snapshot)
                    next_snapshot: Callable[[], Any] = arrived.get
                else:
                    watch = registry.watch(service)
                    next_snapshot = watch.__anext__
                await next_snapshot()
                for n in range(rounds):
                    ident = f"i{n}"
                    await asyncio.to_thread(_settle)
                    recorder.take()
                    recorder.on = True
                    writer.register(ident)
                    while True:
                        snapshot = await next_snapshot()
                        recorder.on = False
                        if ident in snapshot.ids():
                            break
                    traces.append(recorder.take())
                    await asyncio.to_thread(writer.wait_done)
                if mode == "subscribe":
                    await unsubscribe()
                else:
                    await watch.aclose()
        finally:
            await asyncio.to_thread(writer.close)
        return traces

    return asyncio.run(main())


def trace_blocking(url: str, recorder: Recorder, rounds: int) -> list[Trace]:
    """Rounds of ``for snapshot in Registry.watch(...)``."""
    service = f"path-{uuid.uuid4().hex[:8]}"
    writer = Writer(url, service)
    traces = []
    try:
        with Registry.connect(url) as registry, registry.watch(service) as watch:
            next(watch)
            for n in range(rounds):
                ident = f"i{n}"
                _settle()
                recorder.take()
                recorder.on = True
                writer.register(ident)
                while True:
                    snapshot = next(watch)
                    recorder.on = False
                    if ident in snapshot.ids():
                        break
                    recorder.on = True
                traces.append(recorder.take())
                writer.wait_done()
    finally:
        writer.close()
    return traces


def common(traces: list[Trace]) -> dict[str, set[str]]:
    """Files (and their functions) present in every round."""
    files = set.intersection(*(set(calls) for calls, _, _ in traces))
    return {name: set.intersection(*(calls[name] for calls, _, _ in traces)) for name in sorted(files)}


def main(argv: list[str]) -> int:
    """Trace each backend and consumer; print one block per pair and a summary table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="zookeeper,etcd,consul")
    parser.add_argument("--servers", default="process", choices=("process", "container"))
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args(argv)
    recorder = Recorder()
    threading.setprofile(recorder.hook)  # threads started later (kazoo's, the blocking facade's loop)
    sys.setprofile(recorder.hook)
    summary = []
    for backend in options.backend.split(","):
        with start_server(backend, options.servers) as server:
            for mode in ("subscribe", "async-for", "blocking-for"):
                if mode == "blocking-for":
                    traces = trace_blocking(server.url, recorder, options.rounds)
                else:
                    traces = trace_async(server.url, recorder, options.rounds, mode)
                files = common(traces)
                calls = sorted(count for _, count, _ in traces)
                tasks = sorted(set.intersection(*(names for _, _, names in traces)))
                print(f"\n## {backend}, {mode}: {len(files)} files, library calls per event {calls}")
                print(f"  asyncio tasks (by coroutine) running library code: {', '.join(tasks)}")
                for name, functions in files.items():
                    print(f"  {name}: {', '.join(sorted(functions))}")
                summary.append((backend, mode, len(files), calls[len(calls) // 2], len(tasks)))
    sys.setprofile(None)
    threading.setprofile(None)
    print("\n| backend | consumer | files | library calls (median) | asyncio tasks |")
    print("| --- | --- | ---: | ---: | ---: |")
    for backend, mode, count, median, task_count in summary:
        print(f"| {backend} | {mode} | {count} | {median} | {task_count} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
