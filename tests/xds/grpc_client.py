"""A gRPC client process using grpcio's own ``xds:///`` resolver (bootstrap from the environment).

Run as ``python -m tests.xds.grpc_client``; commands are JSON lines on stdin, each answered by one JSON line
on stdout:

* ``{"op": "call", "target": T, "count": N, "timeout": S}`` -> ``{"counts": {server: n}, "errors": {msg: n}}``
* ``{"op": "start", "target": T}`` -> starts calling ``T`` in a loop (one call every ~2 ms), recording
  ``(time.monotonic() at the call's start, server name or None)``; ``{"ok": true}``
* ``{"op": "stats", "target": T, "since": t}`` -> for calls started at or after ``t``:
  ``{"servers": {name: [count, first, last]}, "errors": [count, first, last, message]}``
* ``{"op": "exit"}``

``time.monotonic()`` is CLOCK_MONOTONIC, the same clock in every process of the machine, so the test compares
these times with its own.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from typing import Any

import grpc

METHOD = "/discovery.test.Echo/Who"
LOOP_PAUSE = 0.002
MAX_RECORDS = 500_000


class Loop:
    """Calls one target again and again, recording who answered."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.records: collections.deque[tuple[float, str | None, str]] = collections.deque(maxlen=MAX_RECORDS)
        self._call = channel.unary_unary(METHOD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                name: str | None = self._call(b"", timeout=2.0).decode()
                error = ""
            except grpc.RpcError as failure:
                name, error = None, f"{failure.code().name}: {(failure.details() or '')[:200]}"
            self.records.append((started, name, error))
            time.sleep(LOOP_PAUSE)

    def stats(self, since: float) -> dict[str, Any]:
        servers: dict[str, list[float]] = {}
        errors: list[Any] = [0, None, None, ""]
        for started, name, error in list(self.records):
            if started < since:
                continue
            if name is None:
                errors = [errors[0] + 1, errors[1] if errors[1] is not None else started, started, error]
                continue
            entry = servers.setdefault(name, [0, started, started])
            entry[0] += 1
            entry[2] = started
        return {"servers": servers, "errors": errors}


def main() -> None:
    channels: dict[str, grpc.Channel] = {}
    loops: dict[str, Loop] = {}

    def channel(target: str) -> grpc.Channel:
        if target not in channels:
            channels[target] = grpc.insecure_channel(target)
        return channels[target]

    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        reply: dict[str, Any]
        if op == "call":
            counts: collections.Counter[str] = collections.Counter()
            errors: collections.Counter[str] = collections.Counter()
            call = channel(command["target"]).unary_unary(METHOD)
            for _ in range(command["count"]):
                try:
                    counts[call(b"", timeout=command.get("timeout", 10.0)).decode()] += 1
                except grpc.RpcError as failure:
                    errors[f"{failure.code().name}: {(failure.details() or '')[:200]}"] += 1
            reply = {"counts": dict(counts), "errors": dict(errors)}
        elif op == "start":
            if command["target"] not in loops:
                loops[command["target"]] = Loop(channel(command["target"]))
            reply = {"ok": True}
        elif op == "stats":
            reply = loops[command["target"]].stats(command.get("since", 0.0))
        elif op == "exit":
            return
        else:
            reply = {"error": f"unknown op {op}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
