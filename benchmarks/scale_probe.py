"""Scenario 6's measuring process, alone so that its RSS and CPU are its own.

    python -m benchmarks.scale_probe register URL INSTANCES SERVICES [--ttl=SECONDS] [--catalog]
        registers (TTL default 30 s), prints READY, holds until stdin closes
    python -m benchmarks.scale_probe watch URL INSTANCES SERVICES SUBSCRIBERS CHANGES [--local] [--idle=SECONDS]
        [--connections=PORT]

``rawlist BACKEND HOST PORT SCOPE SERVICES``: the raw client's own listing of the same keys (the anchor of the
initial sync): etcd one ``get_prefix`` of the namespace; ZooKeeper ``get_children`` of every service and a ``get`` of
every child, all sent at once (kazoo pipelines them); Consul one ``health.service`` per service, 32 at a time (the
bound our ``services()`` uses); prints ``RESULT`` with ``list_s`` and ``list_cpu_s``.

``watch``: subscriber k subscribes to service ``svc-<k mod SERVICES>`` and to the shared service ``hot``; it prints
one ``RESULT <json>`` line: RSS, CPU and wall time to the initial sync (every subscriber has seen its service's
full set), idle CPU over an idle window (default 3 s, starting 2 s after the sync), and the fan-out of CHANGES
single changes to ``hot`` (register() called → each subscriber's callback). ``--local`` registers the INSTANCES in
this process first (the memory backend). ``--connections=PORT`` samples this process's TCP connections to the
server's PORT every 50 ms and reports the most seen at once (``connections_max``) and the number after the idle
window.

``register --catalog`` (Consul only) writes the instances as catalog entries through ``/v1/txn`` (32 instances a
transaction, on 10 synthetic nodes, each with a passing liveness check and this library's ``Meta``) instead of
agent services with TTL heartbeats: an agent's registration slows as it holds more services (its anti-entropy
compares all of them per change: 69 s per 1 000 with 5 000-7 000 held), so 50 000 agent services would spend
hours registering. What the measured process reads is the same health entries either way.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

import psutil

from discovery.core.models import Instance, Snapshot
from discovery.registry.async_registry import AsyncRegistry
from discovery.registry.blocking import Registry

CONCURRENCY = 64
#: Seconds between the end of the initial sync and the start of the idle window.
SETTLE_S = 2.0


def instances(count: int, services: int) -> list[Instance]:
    """The instances, spread evenly over the services."""
    return [Instance(f"svc-{n % services}", f"i{n}", "127.0.0.1", 10000 + n % 50000) for n in range(count)]


async def register_all(registry: AsyncRegistry, wanted: list[Instance], ttl: float = 30.0) -> None:
    """Register with bounded concurrency."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(instance: Instance) -> None:
        async with gate:
            await registry.register(instance, ttl=ttl)

    await asyncio.gather(*(one(i) for i in wanted))


def register(url: str, count: int, services: int, ttl: float) -> None:
    """Hold ``count`` registrations until stdin closes."""

    async def main() -> None:
        async with await AsyncRegistry.connect(url) as registry:
            started = time.perf_counter()
            await register_all(registry, instances(count, services), ttl)
            print("READY", f"{time.perf_counter() - started:.3f}", flush=True)
            await asyncio.to_thread(sys.stdin.read)

    asyncio.run(main())


def catalog_register(url: str, count: int, services: int) -> None:
    """Hold ``count`` Consul catalog entries (see the module docs) until stdin closes."""
    from urllib.parse import urlsplit

    import httpx

    from discovery_consul.layout import consul_service_id, liveness_check_id, service_tags
    from discovery_consul.records import instance_meta

    parts = urlsplit(url)
    scope = parts.path.strip("/") or None
    nodes = [f"scale-holder-{n}" for n in range(10)]
    started = time.perf_counter()
    with httpx.Client(base_url=f"http://{parts.hostname}:{parts.port}", timeout=120) as client:
        for node in nodes:
            client.put("/v1/catalog/register", json={"Node": node, "Address": "127.0.0.1"}).raise_for_status()
        wanted = instances(count, services)
        for start in range(0, count, 32):  # a transaction takes at most 64 operations: 2 per instance
            operations: list[dict[str, object]] = []
            for n, instance in enumerate(wanted[start:start + 32], start):
                service_id = consul_service_id(instance, scope)
                node = nodes[n % len(nodes)]
                operations.append({"Service": {"Verb": "set", "Node": node, "Service": {
                    "ID": service_id, "Service": instance.service, "Tags": service_tags(instance),
                    "Meta": instance_meta(instance, scope), "Address": instance.address, "Port": instance.port}}})
                operations.append({"Check": {"Verb": "set", "Check": {
                    "Node": node, "CheckID": liveness_check_id(service_id), "Name": "liveness",
                    "Status": "passing", "ServiceID": service_id}}})
            answer = client.put("/v1/txn", json=operations)
            if answer.status_code != 200:
                raise RuntimeError(f"catalog transaction failed: {answer.status_code} {answer.text[:200]}")
    print("READY", f"{time.perf_counter() - started:.3f}", flush=True)
    sys.stdin.read()


class ConnectionSampler:
    """The most TCP connections this process held to one server port at once, sampled every 50 ms."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.most = 0
        self._stop = threading.Event()
        self._native_id = -1
        self._thread = threading.Thread(target=self._run, name="connection-sampler", daemon=True)
        self._thread.start()

    def count(self) -> int:
        """Connections to the port now (any state but LISTEN)."""
        return sum(1 for c in psutil.Process().net_connections("tcp")
                   if c.raddr and c.raddr.port == self._port and c.status != psutil.CONN_LISTEN)

    def cpu_s(self) -> float:
        """CPU time the sampler's own thread has used (subtracted from the process's: it is not the library's)."""
        for thread in psutil.Process().threads():
            if thread.id == self._native_id:
                return float(thread.user_time + thread.system_time)
        return 0.0

    def _run(self) -> None:
        self._native_id = threading.get_native_id()
        while not self._stop.wait(0.05):
            self.most = max(self.most, self.count())

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


def watch(url: str, count: int, services: int, subscribers: int, changes: int, local: bool, idle: float,
          connections_port: int | None = None) -> None:
    """Measure one process with ``subscribers`` watchers."""
    process = psutil.Process()
    sampler = ConnectionSampler(connections_port) if connections_port else None
    rss_before = process.memory_info().rss
    registry = Registry.connect(url)
    if local:
        asyncio.run_coroutine_threadsafe(
            register_all(registry.async_registry, instances(count, services)), registry.loop
        ).result()
    per_service = count // services
    synced = threading.Event()
    remaining = [subscribers]
    hot_seen: list[dict[str, int]] = [{} for _ in range(subscribers)]
    hot_changed = threading.Condition()

    def make_callbacks(k: int) -> tuple[object, object]:
        done = [False]

        def on_service(snapshot: Snapshot) -> None:
            if not done[0] and len(snapshot) >= per_service:
                done[0] = True
                remaining[0] -= 1
                if remaining[0] == 0:
                    synced.set()

        def on_hot(snapshot: Snapshot) -> None:
            now = time.monotonic_ns()
            seen = hot_seen[k]
            fresh = [i for i in snapshot.ids() if i not in seen]
            if fresh:
                for ident in fresh:
                    seen[ident] = now
                with hot_changed:
                    hot_changed.notify_all()

        return on_service, on_hot

    def sampler_cpu() -> float:
        return sampler.cpu_s() if sampler else 0.0

    cpu0, wall0, sampled0 = process.cpu_times(), time.perf_counter(), sampler_cpu()
    for k in range(subscribers):
        on_service, on_hot = make_callbacks(k)
        registry.subscribe(f"svc-{k % services}", on_service)  # type: ignore[arg-type]
        registry.subscribe("hot", on_hot)  # type: ignore[arg-type]
    if not synced.wait(600):
        raise TimeoutError(f"initial sync incomplete: {remaining[0]} subscribers waiting")
    wall1, cpu1, sampled1 = time.perf_counter(), process.cpu_times(), sampler_cpu()
    sync_cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system) - (sampled1 - sampled0)
    rss_synced = process.memory_info().rss
    # Idle window: what keeping everything watched costs when nothing changes. It starts SETTLE_S after the sync:
    # on etcd the last of thousands of watch streams are still being set up when every subscriber has its set.
    time.sleep(SETTLE_S)
    cpu1, sampled1 = process.cpu_times(), sampler_cpu()
    time.sleep(idle)
    cpu2, sampled2 = process.cpu_times(), sampler_cpu()
    idle_connections = sampler.count() if sampler else None
    delays: list[float] = []
    completes: list[float] = []
    for c in range(changes):
        ident = f"h{c}"
        # From the call's start: this process's own watch can deliver before register() has returned.
        returned = time.monotonic_ns()
        registry.register(Instance("hot", ident, "127.0.0.1", 9000), ttl=30)
        with hot_changed:
            if not hot_changed.wait_for(lambda ident=ident: all(ident in s for s in hot_seen), 120):  # type: ignore[misc]
                raise TimeoutError(f"fan-out of {ident} incomplete")
        arrivals = [s[ident] for s in hot_seen]
        delays.extend((t - returned) / 1e9 for t in arrivals)
        completes.append((max(arrivals) - returned) / 1e9)
    result: dict[str, object] = {
        "rss_mb": rss_synced / 2**20,
        "rss_growth_mb": (rss_synced - rss_before) / 2**20,
        "sync_s": wall1 - wall0,
        "sync_cpu_s": sync_cpu_s,
        # Clamped: the sampler's CPU, subtracted, is read in 10 ms ticks and may exceed an idle process's own.
        "idle_cpu_pct": max(0.0, 100 * ((cpu2.user + cpu2.system) - (cpu1.user + cpu1.system) - (sampled2 - sampled1))
                            / idle),
        "fanout_delays_s": delays,
        "fanout_complete_s": completes,
    }
    if sampler is not None:
        sampler.stop()
        result["connections_max"] = sampler.most
        result["connections_idle"] = idle_connections
    print("RESULT", json.dumps(result), flush=True)
    registry.close()


def raw_list(backend: str, host: str, port: int, scope: str, services: int) -> None:
    """Time the raw client's listing of every instance of the ``services`` services."""
    process = psutil.Process()
    names = [f"svc-{n}" for n in range(services)]
    cpu0, wall0 = process.cpu_times(), time.perf_counter()
    if backend == "etcd":
        import aetcd
        from aetcd import rpc
        from aetcd.utils import prefix_range_end

        async def etcd_list() -> int:
            # Paged at one revision through aetcd's generated stub: gRPC refuses answers over 4 MiB, and aetcd's
            # get_prefix has no limit parameter.
            client = aetcd.Client(host=host, port=port, timeout=120)
            await client.connect()
            try:
                prefix = f"/{scope}/default/".encode()
                key, end, revision, count = prefix, prefix_range_end(prefix), 0, 0
                while True:
                    response = await rpc.KVStub(client.channel).Range(
                        rpc.RangeRequest(key=key, range_end=end, limit=2000, revision=revision)
                    )
                    revision = revision or int(response.header.revision)
                    count += len(response.kvs)
                    if not response.more or not response.kvs:
                        return count
                    key = bytes(response.kvs[-1].key) + b"\0"
            finally:
                await client.close()

        found = asyncio.run(etcd_list())
    elif backend == "zookeeper":
        from kazoo.client import KazooClient

        client = KazooClient(hosts=f"{host}:{port}", timeout=30)
        client.start(timeout=30)
        try:
            base = f"/{scope}/default"
            children = [(name, client.get_children_async(f"{base}/{name}")) for name in names]
            reads = [client.get_async(f"{base}/{name}/{child}") for name, listing in children
                     for child in listing.get(timeout=120)]
            found = sum(1 for read in reads if read.get(timeout=120))
        finally:
            client.stop()
            client.close()
    else:
        import consul.aio

        async def consul_list() -> int:
            client = consul.aio.Consul(host=host, port=port)
            gate = asyncio.Semaphore(32)

            async def one(name: str) -> int:
                async with gate:
                    _, entries = await client.health.service(name)
                    return len(entries)

            try:
                return sum(await asyncio.gather(*(one(name) for name in names)))
            finally:
                await client.close()

        found = asyncio.run(consul_list())
    wall1, cpu1 = time.perf_counter(), process.cpu_times()
    result = {"list_s": wall1 - wall0, "list_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
              "found": found}
    print("RESULT", json.dumps(result), flush=True)


def main(argv: list[str]) -> int:
    """Entry point."""
    if argv[0] == "rawlist":
        raw_list(argv[1], argv[2], int(argv[3]), argv[4], int(argv[5]))
    elif argv[0] == "register":
        ttl = next((float(a.split("=", 1)[1]) for a in argv if a.startswith("--ttl=")), 30.0)
        if "--catalog" in argv:
            catalog_register(argv[1], int(argv[2]), int(argv[3]))
        else:
            register(argv[1], int(argv[2]), int(argv[3]), ttl)
    else:
        idle = next((float(a.split("=", 1)[1]) for a in argv if a.startswith("--idle=")), 3.0)
        port = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("--connections=")), None)
        watch(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]), "--local" in argv, idle, port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
