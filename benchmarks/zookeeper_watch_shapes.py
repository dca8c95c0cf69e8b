"""What ZooKeeper 3.6+'s persistent recursive watches would save this library, measured before building on them.

    python -m benchmarks.zookeeper_watch_shapes [--servers process|container] [--creates N] [--trials N]
        [--rounds N] [--pace SECONDS]

kazoo 2.11 has no call for ``addWatch`` (opcode 106). With one-shot watches a stream follows a service by a children
watch re-armed by a ``get_children`` of the whole service on every change, plus a ``get`` of each new node (what
kazoo's ``ChildrenWatch`` + get does, and what this library's streams did before docs/decisions/zookeeper-watches.md);
and a registration arms its owner watch with an ``exists`` per node. A persistent recursive watch on the service is
armed once and reports each created, changed or deleted node by path; this script arms it as the backend does
(:mod:`discovery_zookeeper.persistent`) and prints two side-by-side tables:

* *registration on the loop* (``--creates`` ephemeral creates back to back on one kazoo client completing on an
  asyncio loop, as the ZooKeeper backend's): the create (a ``multi``) alone; with the ``exists`` that arms today's
  owner watch sent right behind it; with a persistent recursive watch on the parent armed once (its event for each
  create handled on the loop instead). Loop-thread CPU and wall time per create, each the median of ``--rounds``.
* *propagation to a watcher* (``--trials`` creates by a third client, ``--pace`` apart, so every thread is idle
  when a change comes, as between real changes): create called → the new node's data read by a watcher that
  follows the parent the way kazoo's ``ChildrenWatch`` plus a ``get`` of each new child does (and this library's
  stream), or by one on a persistent recursive watch (the event names the node: one ``get``).

The numbers are for notes and decision pages (docs/decisions/zookeeper-writes.md), not asserted;
tests/test_zookeeper_watch_shapes.py runs it small to keep it working and to check that every create reached the
persistent watch.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.protocol.states import Callback, EventType, WatchedEvent

from discovery_zookeeper import persistent
from discovery_zookeeper.bridge import LoopHandler, settled_future
from tests.harness import start_server

RECORD = b"x" * 340  # about the size of this library's record


def add_persistent_watch(client: KazooClient, path: str, watcher: Callable[[WatchedEvent], None]) -> Any:
    """Arm a persistent recursive watch on ``path`` (no chroot) as the ZooKeeper backend does
    (:mod:`discovery_zookeeper.persistent`); returns kazoo's async result of the request."""
    watchers: dict[str, set[Callable[[WatchedEvent], None]]] = {path: {watcher}}
    persistent.hear_persistent_watches(client, watchers)
    return persistent.send(client, persistent.AddWatch(path, persistent.MODE_PERSISTENT_RECURSIVE))


async def _creates_on_loop(hosts: str, base: str, shape: str, creates: int) -> tuple[float, float, int]:
    """Loop-thread CPU and wall µs per create, and the events the persistent watch handed to the loop."""
    client = KazooClient(hosts=hosts, handler=LoopHandler())
    await asyncio.to_thread(client.start)
    try:
        await asyncio.to_thread(client.ensure_path, base)
        loop = asyncio.get_running_loop()
        heard = [0]

        def count(event: WatchedEvent) -> None:
            heard[0] += 1

        if shape == "persistent":
            armed = add_persistent_watch(client, base, lambda event: loop.call_soon_threadsafe(count, event))
            await settled_future(loop, armed)
        cpu, wall = time.thread_time(), time.perf_counter()
        for number in range(creates):
            path = f"{base}/n{number}"
            transaction = client.transaction()
            transaction.create(path, RECORD, ephemeral=True)
            sent = transaction.commit_async()
            if shape == "exists":
                settled_future(loop, client.exists_async(path, lambda event: None))
            await settled_future(loop, sent)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        deadline = loop.time() + 5
        while shape == "persistent" and heard[0] < creates and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return cpu / creates * 1e6, wall / creates * 1e6, heard[0]
    finally:
        await asyncio.to_thread(client.stop)
        client.close()


def _propagation(hosts: str, trials: int, pace: float) -> dict[str, list[float]]:
    writer, by_children, by_persistent = (KazooClient(hosts=hosts) for _ in range(3))
    for client in (writer, by_children, by_persistent):
        client.start()
    seen: dict[str, float] = {}
    arrived = threading.Condition()

    def saw(name: str) -> None:
        with arrived:
            seen[name] = time.perf_counter()
            arrived.notify_all()

    try:
        writer.ensure_path("/shapes/children")
        writer.ensure_path("/shapes/persistent")
        known: set[str] = set()

        def children_changed(event: WatchedEvent | None = None) -> None:  # runs on kazoo's callback thread
            names = by_children.get_children("/shapes/children", watch=children_changed)
            for name in sorted(set(names) - known):
                known.add(name)
                by_children.get(f"/shapes/children/{name}")
                saw(name)

        def node_event(event: WatchedEvent) -> None:
            if event.type == EventType.CREATED:
                by_persistent.get(event.path)
                saw(event.path.rsplit("/", 1)[1])

        children_changed()
        # The watcher runs on kazoo's connection thread, which must not block: the get runs on kazoo's callback
        # thread, where a ChildrenWatch's function runs too.
        add_persistent_watch(by_persistent, "/shapes/persistent", lambda event: by_persistent.handler.dispatch_callback(
            Callback("watch", node_event, (event,)))).get(10)
        delays: dict[str, list[float]] = {"children": [], "persistent": []}
        for trial in range(trials):
            for shape in ("children", "persistent"):
                name = f"{shape}-{trial}"
                started = time.perf_counter()
                writer.create(f"/shapes/{shape}/{name}", RECORD, ephemeral=True)
                with arrived:
                    if not arrived.wait_for(lambda name=name: name in seen, 10):  # type: ignore[misc]
                        raise TimeoutError(f"the {shape} watcher never read {name}")
                delays[shape].append(seen[name] - started)
                time.sleep(pace)  # idle between changes, as between real ones (not synchronisation)
        return delays
    finally:
        for client in (writer, by_children, by_persistent):
            client.stop()
            client.close()


def main(argv: list[str]) -> int:
    """Start a ZooKeeper server, measure both tables, print them."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zookeeper_watch_shapes")
    parser.add_argument("--servers", default="process", choices=("process", "container"))
    parser.add_argument("--creates", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--pace", type=float, default=0.1)
    args = parser.parse_args(argv)
    with start_server("zookeeper", args.servers) as server:
        hosts = f"{server.host}:{server.port}"
        shapes = {"multi": "create (`multi`) alone", "exists": "+ `exists` owner watch per node (today)",
                  "persistent": "+ persistent recursive watch on the parent, armed once"}
        measured: dict[str, list[tuple[float, float, int]]] = {shape: [] for shape in shapes}
        for round_number in range(args.rounds):
            for shape in shapes:  # in turns: a drift of the machine falls on every shape alike
                base = f"/shapes-loop/{shape}-{round_number}"
                measured[shape].append(asyncio.run(_creates_on_loop(hosts, base, shape, args.creates)))
        print(f"## Registration on the loop: {args.creates} creates back to back, median of {args.rounds} rounds\n")
        print("| shape | loop CPU µs / create | wall µs / create | persistent events heard |")
        print("|---|---:|---:|---:|")
        for shape, label in shapes.items():
            rows = measured[shape]
            heard = f"{min(r[2] for r in rows)} of {args.creates}" if shape == "persistent" else "-"
            print(f"| {label} | {statistics.median(r[0] for r in rows):.0f} | "
                  f"{statistics.median(r[1] for r in rows):.0f} | {heard} |")
        delays = _propagation(hosts, args.trials, args.pace)
        print(f"\n## Propagation: create called → the new node's data read by a watcher; {args.trials} trials, "
              f"{args.pace} s apart\n")
        print("| watcher | p50 ms | p90 ms |")
        print("|---|---:|---:|")
        labels = {"children": "children watch + `get_children` + `get` (kazoo ChildrenWatch + get; ours today)",
                  "persistent": "persistent recursive watch + `get`"}
        for shape, label in labels.items():
            ordered = sorted(delays[shape])
            print(f"| {label} | {statistics.median(ordered) * 1e3:.2f} | "
                  f"{ordered[int(len(ordered) * 0.9)] * 1e3:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
