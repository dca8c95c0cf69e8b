"""tooz group membership as a benchmark worker (runs in an anchor venv; stdlib + tooz only).

    python tooz_worker.py write|watch TOOZ_URL GROUP [POLL_SECONDS]

A tooz member is one coordinator, so ``REG <id>`` starts a coordinator whose member id is ``<id>`` (outside the
timed span) and times its ``join_group``; ``DEREG <id>`` times ``leave_group`` and stops it. The watcher uses
``watch_join_group`` / ``watch_leave_group`` and calls ``run_watchers()`` every POLL_SECONDS (default 0.01: tooz
delivers events only from that call, so the poll period is part of its latency; 10 ms is its best case).
Protocol: benchmarks/procs.py.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

from tooz import coordination

_out = threading.Lock()


def emit(*fields: object) -> None:
    with _out:
        sys.stdout.write(" ".join(str(f) for f in fields) + "\n")
        sys.stdout.flush()


def coordinator(url: str, member: str) -> coordination.CoordinationDriver:
    coord = coordination.get_coordinator(url, member.encode())
    coord.start(start_heart=True)
    return coord


def ensure_group(coord: coordination.CoordinationDriver, group: bytes) -> None:
    with contextlib.suppress(coordination.GroupAlreadyExist):
        coord.create_group(group).get()


def write(url: str, group: bytes) -> None:
    members: dict[str, coordination.CoordinationDriver] = {}
    setup = coordinator(url, f"setup-{time.monotonic_ns()}")
    ensure_group(setup, group)
    emit("READY")
    for line in sys.stdin:
        command, _, ident = line.strip().partition(" ")
        if command == "REG":
            coord = members[ident] = coordinator(url, ident)
            t0 = time.monotonic_ns()
            coord.join_group(group).get()
        elif command == "DEREG":
            coord = members.pop(ident)
            t0 = time.monotonic_ns()
            coord.leave_group(group).get()
        else:
            emit("ERROR", "unknown-command", command)
            continue
        emit("OK", ident, t0, time.monotonic_ns())
        if command == "DEREG":
            coord.stop()
    for coord in members.values():
        coord.stop()
    setup.stop()


def watch(url: str, group: bytes, poll: float) -> None:
    coord = coordinator(url, f"watcher-{time.monotonic_ns()}")
    ensure_group(coord, group)
    coord.watch_join_group(group, lambda event: emit("ADD", event.member_id.decode(), time.monotonic_ns()))
    coord.watch_leave_group(group, lambda event: emit("DEL", event.member_id.decode(), time.monotonic_ns()))
    coord.run_watchers()
    stop = threading.Event()

    def poll_loop() -> None:
        while not stop.is_set():
            coord.run_watchers()
            time.sleep(poll)

    thread = threading.Thread(target=poll_loop, daemon=True)
    thread.start()
    emit("READY")
    sys.stdin.read()
    stop.set()
    thread.join(5)
    coord.stop()


def main(argv: list[str]) -> int:
    role, url, group = argv[0], argv[1], argv[2].encode()
    poll = float(argv[3]) if len(argv) > 3 else 0.01
    try:
        if role == "write":
            write(url, group)
        else:
            watch(url, group, poll)
    except Exception as error:
        emit("ERROR", type(error).__name__, str(error).replace("\n", " "))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
