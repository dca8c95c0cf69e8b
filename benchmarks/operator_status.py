"""What following its own records costs a registry, and how fast an owner adopts an operator's ``set_status``.

    .venv/bin/python -m benchmarks.operator_status [--servers process|container|none] [--instances 1000]
        [--services 100] [--tries 30]

For each backend (memory, and with ``--servers`` a harness ZooKeeper, etcd and Consul), in this process:

* register: ``--instances`` registrations over ``--services`` services from one ``AsyncRegistry`` (64 at a time),
  with ``follow_records`` on (the default: one backend watch per service with registrations) and off; wall time,
  this process's RSS growth and its CPU seconds over a 3 s idle window after the registrations;
* adopt: another registry sets the status of one of the owner's instances (DRAINING, UP, alternately); the time
  from ``set_status()`` being called to the owner's ``on_instance_change`` callback, p50 and p99 over ``--tries``.

Prints one table; nothing is asserted (docs/decisions/benchmarks-measurement-method.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator

import psutil

from discovery.cli.tables import render_table
from discovery.core.models import Instance, Status
from discovery.registry.async_registry import AsyncRegistry
from tests.harness import ServerHandle, start_server

CONCURRENCY = 64
IDLE_WINDOW = 3.0


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round((len(ordered) - 1) * q / 100)))]


def url_for(kind: str, server: ServerHandle | None) -> str:
    """A fresh store / root / prefix / scope on the backend."""
    tag = f"opstatus-{uuid.uuid4().hex[:10]}"
    if server is None:
        return f"memory:///{tag}?ttl=30"
    if kind == "zookeeper":
        return f"{server.url}/{tag}?session_timeout=10"
    if kind == "etcd":
        return f"{server.url}/{tag}?ttl=30"
    return f"{server.url}/{tag}?ttl=30&timeout=60"


async def register_cost(url: str, instances: int, services: int, follow: bool,
                        idle: float = IDLE_WINDOW) -> tuple[float, float, float]:
    """Seconds to register, RSS growth (MiB) and CPU seconds over the idle window after."""
    process = psutil.Process()
    rss_before = process.memory_info().rss
    async with AsyncRegistry.connect(url, follow_records=follow) as registry:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(n: int) -> None:
            async with gate:
                await registry.register(Instance(f"svc-{n % services}", f"i{n}", "127.0.0.1", 10000 + n), ttl=30)

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(instances)))
        took = time.perf_counter() - started
        await asyncio.sleep(1.0)  # the follower's first snapshots
        rss = (process.memory_info().rss - rss_before) / 2**20
        cpu_before = sum(process.cpu_times()[:2])
        await asyncio.sleep(idle)
        idle_cpu = sum(process.cpu_times()[:2]) - cpu_before
    return took, rss, idle_cpu


async def adoption_latency(url: str, tries: int) -> list[float]:
    """Seconds from an operator's ``set_status()`` call to the owner's ``on_instance_change``, per try."""
    async with AsyncRegistry.connect(url) as owner, AsyncRegistry.connect(url) as operator:
        registration = await owner.register(Instance("adopt", "a1", "127.0.0.1", 9000), ttl=30)
        adopted: asyncio.Queue[float] = asyncio.Queue()
        registration.on_instance_change(lambda _registration, _instance: adopted.put_nowait(time.perf_counter()))
        await asyncio.sleep(1.0)  # past the owner's own write
        latencies = []
        for n in range(tries):
            status = Status.DRAINING if n % 2 == 0 else Status.UP
            started = time.perf_counter()
            await operator.set_status("adopt", "a1", status)
            latencies.append(await asyncio.wait_for(adopted.get(), 30) - started)
    return latencies


@contextlib.contextmanager
def servers(provider: str) -> Iterator[dict[str, ServerHandle | None]]:
    """memory, plus one harness server per real backend unless ``provider`` is ``none``."""
    with contextlib.ExitStack() as stack:
        found: dict[str, ServerHandle | None] = {"memory": None}
        if provider != "none":
            for kind in ("zookeeper", "etcd", "consul"):
                found[kind] = stack.enter_context(start_server(kind, provider))
        yield found


def main() -> None:
    """Run both measurements on every backend and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default="process", choices=["process", "container", "none"])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--tries", type=int, default=30)
    options = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # e.g. the open-ACL warning of each ZooKeeper root
    rows = []
    with servers(options.servers) as found:
        for kind, server in found.items():
            # A small warm-up first, so that neither measured run pays the one-time costs (imports, pools).
            asyncio.run(register_cost(url_for(kind, server), 50, 5, True, idle=0.0))
            costs = {follow: asyncio.run(register_cost(url_for(kind, server), options.instances, options.services,
                                                       follow)) for follow in (False, True)}
            latencies = asyncio.run(adoption_latency(url_for(kind, server), options.tries))
            rows.append((
                kind,
                f"{costs[False][0]:.2f} / {costs[True][0]:.2f}",
                f"{costs[False][1]:.1f} / {costs[True][1]:.1f}",
                f"{costs[False][2]:.2f} / {costs[True][2]:.2f}",
                f"{percentile(latencies, 50) * 1000:.1f}",
                f"{percentile(latencies, 99) * 1000:.1f}",
            ))
    print(f"{options.instances} registrations over {options.services} services from one registry "
          "(follow_records off / on); adoption over", options.tries, "set_status() calls")
    print(render_table(("BACKEND", "REGISTER s", "RSS +MiB", f"IDLE CPU s/{IDLE_WINDOW:g}s", "ADOPT p50 ms",
                        "ADOPT p99 ms"), rows))


if __name__ == "__main__":
    main()
