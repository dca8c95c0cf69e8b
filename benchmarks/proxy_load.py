"""The L4 proxy under 1,000 concurrent connections: what is served, what is refused, what it costs, how it ends.

    .venv/bin/python -m benchmarks.proxy_load [--connections 1000] [--cap 500] [--idle 2]

The proxy runs alone in a child process (a memory registry, one Service, one endpoint: an echo server in this
process); this process opens the client connections in waves of ``--wave`` with asyncio, all on 127.0.0.1.

* default cap: every connection is opened, sends a line and waits for its echo (connect + first echo time), and
  all are held open; then every connection sends a line at once (echo round trip with all of them open); the
  proxy's RSS and file descriptors are sampled while all are open and after all are closed.
* ``--cap``: the proxy started with ``max_connections=cap``; what happens to the connections beyond it.
* ``--idle``: the proxy started with ``idle_timeout=idle``; connections that go quiet after their first echo,
  and how long until the proxy has closed them all.

Loopback only; counts are fixed, every wait has a deadline, the child exits when its stdin closes (or after
five minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import psutil

from discovery import AsyncRegistry, Instance
from discovery.cli.tables import render_table
from discovery.services import AllocationRanges, Service, ServiceCatalog, ServicePort, ServiceStore
from discovery.services.proxy import ServiceProxy

CHILD_LIFETIME = 300.0
STEP_TIMEOUT = 30.0


def raise_descriptor_limit(wanted: int = 16384) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the proxy, in the child ----------------------------------------------------------------------------------------


async def serve(backend_port: int, max_connections: int | None, idle_timeout: float) -> None:
    raise_descriptor_limit()
    registry = await AsyncRegistry.connect(f"memory:///proxy-load-{uuid.uuid4().hex[:8]}?ttl=600")
    store = ServiceStore(registry.backend, AllocationRanges.from_text("127.98.0.0/24", "31998-31998"))
    service = (await store.apply(Service("echo", selector={"app": "echo"},
                                         ports=(ServicePort(7000, backend_port, name="tcp"),)))).service
    await registry.register(Instance("echo", "echo-1", "127.0.0.1", backend_port, labels={"app": "echo"}))
    catalog = ServiceCatalog(registry, store, rescan_interval=0.2)
    await catalog.start()
    await catalog.wait_until(lambda c: len(c.endpoints("default", "echo") or ()) == 1, 30)
    proxy = ServiceProxy(catalog, max_connections=max_connections, idle_timeout=idle_timeout)
    await proxy.start()
    me = psutil.Process()
    print(json.dumps({"address": service.virtual_ip, "port": 7000, "cap": proxy.max_connections}), flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        async with asyncio.timeout(CHILD_LIFETIME):
            while await reader.readline():  # one line asks for a sample
                stats = proxy.stats("default", "echo", "tcp")
                print(json.dumps({"open": proxy.open_connections, "rss": me.memory_info().rss, "fds": me.num_fds(),
                                  "connections": stats.connections, "forwarded": stats.forwarded,
                                  "rejected": stats.rejected, "idle_timeouts": stats.idle_timeouts}), flush=True)
    except TimeoutError:
        pass
    await proxy.close()
    await catalog.close()
    await registry.close()


class Child:
    """The proxy process: started, sampled on demand, ended."""

    def __init__(self, backend_port: int, cap: int | None, idle: float) -> None:
        argv = [sys.executable, "-m", "benchmarks.proxy_load", "--serve", "--backend-port", str(backend_port),
                "--idle", str(idle)] + ([] if cap is None else ["--cap", str(cap)])
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.ready = json.loads(self.process.stdout.readline())

    async def sample(self) -> dict[str, int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("sample\n")
        self.process.stdin.flush()
        line = await asyncio.to_thread(self.process.stdout.readline)
        return dict(json.loads(line))

    async def until(self, key: str, wanted: int, timeout: float = STEP_TIMEOUT) -> tuple[dict[str, int], float]:
        started = time.monotonic()
        while True:
            sample = await self.sample()
            if sample[key] == wanted or time.monotonic() - started > timeout:
                return sample, time.monotonic() - started
            await asyncio.sleep(0.05)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the echo backend and the clients, here -------------------------------------------------------------------------


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass  # the client went away, or this process is ending
    finally:
        writer.close()


@dataclass
class Opened:
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    first_echo_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)
    failed: int = 0


async def open_one(address: str, port: int, opened: Opened) -> None:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            reader, writer = await asyncio.open_connection(address, port)
    except (OSError, TimeoutError):
        opened.failed += 1
        return
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            writer.write(b"hello\n")
            await writer.drain()
            line = await reader.readline()
    except (ConnectionError, OSError):
        line = b""  # reset: the proxy closed it at once
    except TimeoutError:
        opened.failed += 1
        writer.close()
        return
    elapsed = (time.perf_counter() - started) * 1000
    if line == b"hello\n":
        opened.connections.append((reader, writer))
        opened.first_echo_ms.append(elapsed)
    else:  # EOF or reset at once: refused at accept
        opened.refused_ms.append(elapsed)
        writer.close()


async def open_all(address: str, port: int, count: int, wave: int) -> Opened:
    opened = Opened()
    for start in range(0, count, wave):
        await asyncio.gather(*(open_one(address, port, opened) for _ in range(min(wave, count - start))))
    return opened


async def round_trips(opened: Opened) -> list[float]:
    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        started = time.perf_counter()
        writer.write(b"again\n")
        await writer.drain()
        await reader.readline()
        return (time.perf_counter() - started) * 1000

    async with asyncio.timeout(STEP_TIMEOUT):
        return list(await asyncio.gather(*(one(r, w) for r, w in opened.connections)))


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.1f} / {p99:.1f} / {ordered[-1]:.1f}"


async def run(count: int, cap: int, idle: float, wave: int) -> list[tuple[object, ...]]:
    backend = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=4096)
    backend_port = int(backend.sockets[0].getsockname()[1])
    rows: list[tuple[object, ...]] = []
    try:
        # 1. the default cap: everything served, then everything closed
        child = Child(backend_port, None, 3600.0)
        try:
            baseline = await child.sample()
            opened = await open_all(child.ready["address"], child.ready["port"], count, wave)
            held, _ = await child.until("open", len(opened.connections))
            rtt = await round_trips(opened)
            for _reader, writer in opened.connections:
                writer.close()
            after, closing = await child.until("open", 0)
            rows.append((f"cap {child.ready['cap']} (default)", count, len(opened.connections),
                         len(opened.refused_ms) + opened.failed, ms(opened.first_echo_ms), ms(rtt),
                         f"{held['rss'] / 2**20:.0f} (idle {baseline['rss'] / 2**20:.0f})",
                         f"{held['fds']} (idle {baseline['fds']})", f"{after['fds']} after {closing:.1f} s"))
        finally:
            child.close()

        # 2. a cap below the load: the rest is closed at accept, at once
        child = Child(backend_port, cap, 3600.0)
        try:
            opened = await open_all(child.ready["address"], child.ready["port"], count, wave)
            held, _ = await child.until("open", len(opened.connections))
            for _reader, writer in opened.connections:
                writer.close()
            after, closing = await child.until("open", 0)
            rows.append((f"cap {cap}", count, len(opened.connections),
                         f"{len(opened.refused_ms)} (closed after {ms(opened.refused_ms)} ms)"
                         + (f", {opened.failed} failed" if opened.failed else ""), ms(opened.first_echo_ms),
                         "-", f"{held['rss'] / 2**20:.0f}", str(held["fds"]), f"{after['fds']} after {closing:.1f} s"))
        finally:
            child.close()

        # 3. an idle timeout: quiet connections are closed by the proxy
        child = Child(backend_port, None, idle)
        try:
            opened = await open_all(child.ready["address"], child.ready["port"], count, wave)
            quiet_since = time.monotonic()
            held, _ = await child.until("open", len(opened.connections))

            async def closed_by_proxy(reader: asyncio.StreamReader) -> float:
                await reader.read()
                return time.monotonic() - quiet_since

            async with asyncio.timeout(idle + STEP_TIMEOUT):
                ends = await asyncio.gather(*(closed_by_proxy(r) for r, _w in opened.connections))
            after, _ = await child.until("open", 0)
            for _reader, writer in opened.connections:
                writer.close()
            rows.append((f"idle timeout {idle:g} s", count, len(opened.connections),
                         len(opened.refused_ms) + opened.failed, ms(opened.first_echo_ms), "-",
                         f"{held['rss'] / 2**20:.0f}", str(held["fds"]),
                         f"{after['fds']}; all closed {max(ends):.1f} s after the last echo "
                         f"(idle_timeouts={after['idle_timeouts']})"))
        finally:
            child.close()
    finally:
        backend.close()
        await backend.wait_closed()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--cap", type=int, default=500, help="max_connections of the second run")
    parser.add_argument("--idle", type=float, default=2.0, help="idle_timeout (s) of the third run")
    parser.add_argument("--wave", type=int, default=100, help="connections opened at once")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.backend_port, args.cap if "--cap" in sys.argv else None, args.idle))
        return 0
    limit = raise_descriptor_limit()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, descriptor limit {limit}; "
          f"{args.connections} client connections in waves of {args.wave}, one echo endpoint, all on 127.0.0.1")
    rows = asyncio.run(run(args.connections, args.cap, args.idle, args.wave))
    print(render_table(("PROXY", "OPENED", "SERVED", "REFUSED", "CONNECT+ECHO MS p50/p99/max",
                        "ECHO RTT, ALL OPEN, MS p50/p99/max", "PROXY RSS MB", "PROXY FDS", "AFTER CLOSE: FDS"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
