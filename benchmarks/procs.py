"""Worker processes driven over a line protocol (stdin commands, stdout events), in any venv or language.

Every worker — this library or a raw client (:mod:`benchmarks.worker`), tooz (``anchors/tooz_worker.py``),
Curator (``anchors/CuratorBench.java``) — speaks the same protocol:

* it prints ``READY`` once connected (a watcher: once its first id set arrived);
* a writer reads ``REG <id>`` / ``DEREG <id>`` and prints ``OK <id> <t0_ns> <t1_ns>`` (monotonic clock around
  the call);
* a watcher prints ``ADD <id> <t_ns>`` / ``DEL <id> <t_ns>`` when it sees an id appear or go;
* closing stdin ends it.

Times are ``CLOCK_MONOTONIC`` nanoseconds (Python ``time.monotonic_ns``, Java ``System.nanoTime`` on Linux), one
clock for every process on the machine, so a watcher's time minus a writer's time is a propagation delay.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


class WorkerError(RuntimeError):
    """A worker died or did not answer in time; the message carries its stderr tail."""


class Worker:
    """One worker process; its stdout lines are read by a thread into a queue."""

    def __init__(self, argv: Sequence[str], *, label: str, env: dict[str, str] | None = None) -> None:
        self.label = label
        self.process = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=REPO_ROOT, env=env, bufsize=1,
        )
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)
            del self._stderr[:-40]

    def stderr_tail(self) -> str:
        """The last lines the worker wrote to stderr."""
        return "".join(self._stderr)

    def send(self, line: str) -> None:
        """Send one command line."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except BrokenPipeError as error:
            raise WorkerError(f"{self.label} is gone:\n{self.stderr_tail()}") from error

    def expect(self, word: str, timeout: float, *, ident: str | None = None) -> list[str]:
        """The fields of the next line starting with ``word`` (and id ``ident``); other lines are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError(f"{self.label}: no {word} {ident or ''} within {timeout:g} s\n{self.stderr_tail()}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                time.sleep(0.2)  # let the stderr pump catch up
                raise WorkerError(f"{self.label} exited ({self.process.poll()}):\n{self.stderr_tail()}")
            fields = line.split()
            if fields and fields[0] == word and (ident is None or (len(fields) > 1 and fields[1] == ident)):
                return fields
            if fields and fields[0] == "ERROR":
                raise WorkerError(f"{self.label}: {line}\n{self.stderr_tail()}")

    def close(self, timeout: float = 15.0) -> None:
        """Close stdin and wait; kill if it lingers."""
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
