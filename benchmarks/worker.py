"""A writer or watcher process for this library or a raw client: ``python -m benchmarks.worker ROLE TOOL TARGET``.

``ROLE`` is ``write`` or ``watch``, ``TOOL`` ``ours`` or ``raw``, ``TARGET`` the JSON of a
:class:`benchmarks.tools.Target`. Protocol: see :mod:`benchmarks.procs`.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from benchmarks.tools import Target, make_tool

_out = threading.Lock()


def emit(*fields: object) -> None:
    """Print one protocol line (from any thread)."""
    with _out:
        sys.stdout.write(" ".join(str(f) for f in fields) + "\n")
        sys.stdout.flush()


def watch(tool_name: str, target: Target) -> None:
    """Print ADD/DEL lines for every change of the id set."""
    tool = make_tool(tool_name, target)
    seen: set[str] = set()
    first = threading.Event()

    def on_ids(ids: frozenset[str]) -> None:
        now = time.monotonic_ns()
        for added in ids - seen:
            emit("ADD", added, now)
        for removed in seen - ids:
            emit("DEL", removed, now)
        seen.clear()
        seen.update(ids)
        first.set()

    tool.watch(on_ids)
    first.wait(30)
    emit("READY")
    sys.stdin.read()  # until the runner closes our stdin
    tool.close()


def write(tool_name: str, target: Target) -> None:
    """Execute REG/DEREG commands."""
    tool = make_tool(tool_name, target)
    emit("READY")
    for line in sys.stdin:
        command, _, ident = line.strip().partition(" ")
        t0 = time.monotonic_ns()
        if command == "REG":
            tool.register(ident)
        elif command == "DEREG":
            tool.deregister(ident)
        else:
            emit("ERROR", "unknown command", command)
            continue
        emit("OK", ident, t0, time.monotonic_ns())
    tool.close()


def main(argv: list[str]) -> int:
    """Entry point."""
    role, tool_name, target_json = argv
    target = Target(**json.loads(target_json))
    try:
        (watch if role == "watch" else write)(tool_name, target)
    except Exception as error:  # tell the runner instead of dying silently
        emit("ERROR", type(error).__name__, str(error).replace("\n", " "))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
