"""Running ``discovery`` as a real process: one-shot commands, and long-running ones read line by line and stopped
with a chosen signal."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO

COMMAND = [sys.executable, "-m", "discovery.cli"]


def environment(url: str | None = None, **extra: str) -> dict[str, str]:
    """This environment without ``DISCOVERY_URL`` (or with ``url`` as it), plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key != "DISCOVERY_URL"}
    if url is not None:
        env["DISCOVERY_URL"] = url
    env.update(extra)
    return env


def run(*args: str, env: Mapping[str, str] | None = None, stdin: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``discovery ARGS`` to completion; stdout and stderr captured."""
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=timeout, input=stdin,
                          env=dict(env) if env is not None else environment())


class Running:
    """A long-running ``discovery`` process whose stdout lines a thread collects."""

    def __init__(self, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.popen = subprocess.Popen([*COMMAND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=dict(env) if env is not None else environment())
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.popen.stdout is not None
        threading.Thread(target=self._read, args=(self.popen.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def next_line(self, timeout: float = 30) -> str:
        """The next stdout line (AssertionError, with stderr, when none comes in time)."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s; seen {self.seen!r}; stderr: {self.stderr()!r}") from None
        self.seen.append(line)
        return line

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first stdout line matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(0.01, deadline - time.monotonic()))
            if match := re.search(pattern, line):
                return match

    def stderr(self) -> str:
        """Stderr so far if the process ended, else an empty string (reading a live pipe would block)."""
        if self.popen.poll() is None or self.popen.stderr is None:
            return ""
        return self.popen.stderr.read()

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``signum`` and wait; the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.popen.args} did not exit within {timeout} s of signal {signum}") from None

    def kill(self) -> None:
        """Make sure the process is gone (test clean-up)."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
