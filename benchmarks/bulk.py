"""What ``register_many`` buys a blocking caller: a batch registered in one call against one ``register()`` after
another, and the raw client doing both, on each backend.

    python -m benchmarks.bulk [--backend zookeeper,etcd,consul] [--count 100] [--rounds 4] [--servers process]

Each round is a fresh service on one server per backend: one warm-up registration, then ``count`` instances
registered one ``Registry.register()`` after another, then ``count`` more with one ``Registry.register_many()``
(the blocking facade: one hand-off to the loop for the batch); the raw client registers ``count`` one after another
and then ``count`` sent at once (:mod:`benchmarks.tools`' raw tools, from as many threads). Prints the median
wall time of the rounds per row, and every round's.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections.abc import Callable

from benchmarks.tools import Target, make_tool
from discovery import Instance, Registry
from tests.harness import start_server


def _ours(target: Target, count: int) -> tuple[float, float]:
    with Registry.connect(target.ours_url) as registry:
        registry.register(Instance(target.service, "warm", "127.0.0.1", 1), ttl=target.ttl)
        one_by_one = [Instance(target.service, f"s{n}", "127.0.0.1", 8080) for n in range(count)]
        batch = [Instance(target.service, f"m{n}", "127.0.0.1", 8080) for n in range(count)]
        started = time.perf_counter()
        for instance in one_by_one:
            registry.register(instance, ttl=target.ttl)
        sequential = time.perf_counter() - started
        started = time.perf_counter()
        registry.register_many(batch, ttl=target.ttl)
        return sequential, time.perf_counter() - started


def _raw(target: Target, count: int) -> tuple[float, float]:
    tool = make_tool("raw", target)
    try:
        tool.register("warm")
        started = time.perf_counter()
        for n in range(count):
            tool.register(f"s{n}")
        sequential = time.perf_counter() - started
        threads = [threading.Thread(target=tool.register, args=(f"m{n}",)) for n in range(count)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sequential, time.perf_counter() - started
    finally:
        tool.close()


def main() -> None:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="zookeeper,etcd,consul")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--servers", default="process", choices=("process", "container"))
    options = parser.parse_args()
    print(f"| backend | tool | {options.count} one after another (ms) | {options.count} at once (ms) | runs (ms) |")
    print("| --- | --- | ---: | ---: | --- |")
    tools: dict[str, Callable[[Target, int], tuple[float, float]]] = {
        "ours (register / register_many)": _ours, "raw client (in turn / threads)": _raw,
    }
    for backend in options.backend.split(","):
        with start_server(backend, options.servers) as server:
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in tools}
            for _ in range(options.rounds):
                for name, measure in tools.items():
                    target = Target(backend, server.host, server.port, f"bulk-{uuid.uuid4().hex[:8]}", "svc", 30.0)
                    times[name].append(measure(target, options.count))
            for name, runs in times.items():
                sequential = statistics.median(run[0] for run in runs) * 1e3
                together = statistics.median(run[1] for run in runs) * 1e3
                each = "; ".join(f"{a * 1e3:.0f} / {b * 1e3:.0f}" for a, b in runs)
                print(f"| {backend} | {name} | {sequential:.1f} | {together:.1f} | {each} |", flush=True)


if __name__ == "__main__":
    main()
