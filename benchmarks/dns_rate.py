"""The ``cluster.local`` responder under load: answers per second one core sustains, build costs, answer sizes.

    .venv/bin/python -m benchmarks.dns_rate [--endpoints 3000] [--queries 200000] [--seconds 20]

* in-process: ``DnsServer.answer()`` called in a loop (no sockets) for a cached A answer, a cached (truncated)
  SRV answer, an NXDOMAIN and the first (uncached) answer after a catalog change - the responder's own CPU cost.
* UDP: the responder runs alone in a child process (one event loop, one core) with the per-source rate limit
  off; this process sends queries for one cached name over 127.0.0.1 keeping ``--window`` in flight, for
  ``--queries`` answers or ``--seconds``, whichever comes first. Reported: answers per second of wall time and
  per CPU-second of the responder process (psutil), i.e. what one core sustains. A second run keeps the default
  per-source limit (1,000 queries/s, burst 2,000) to show it acting.
* sizes: the largest UDP answer to queries of at most 69 bytes that ask for a 65,535-byte EDNS buffer.

Loopback only; every loop is bounded in count and time; the child exits when its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import select
import socket
import subprocess
import sys
import time
import uuid

import dns.message
import psutil

from discovery import AsyncRegistry, Instance
from discovery.cli.tables import render_table
from discovery.services import HEADLESS, AllocationRanges, Service, ServiceCatalog, ServicePort, ServiceStore
from discovery.services.dns import DnsServer

SRV_NAME = "_http._tcp.web.shop.svc.cluster.local"
A_NAME = "web.shop.svc.cluster.local"
CHILD_LIFETIME = 300.0  # the child's own deadline, whatever happens to this process


async def build_catalog(endpoints: int) -> tuple[AsyncRegistry, ServiceCatalog]:
    """A memory registry with Service ``shop/web`` (ClusterIP), ``shop/heads`` (headless) over ``endpoints``
    instances, followed by a started catalog."""
    registry = await AsyncRegistry.connect(f"memory:///dns-rate-{uuid.uuid4().hex[:8]}?ttl=600")
    store = ServiceStore(registry.backend, AllocationRanges.from_text("127.99.0.0/24", "31999-31999"))
    for name, cluster_ip in (("web", None), ("heads", HEADLESS)):
        await store.apply(Service(name, "shop", selector={"app": "web"}, cluster_ip=cluster_ip,
                                  ports=(ServicePort(80, 8080, name="http"),)))
    for n in range(endpoints):
        await registry.register(Instance("pods", f"pod-{n}", f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}", 8080,
                                         namespace="shop", labels={"app": "web"}))
    catalog = ServiceCatalog(registry, store, rescan_interval=0.2)
    await catalog.start()
    await catalog.wait_until(lambda c: len(c.endpoints("shop", "web") or ()) == endpoints, 120)
    return registry, catalog


def query(name: str, rdtype: str, payload: int = 1232) -> bytes:
    return dns.message.make_query(name, rdtype, use_edns=0, payload=payload).to_wire()


def rate(server: DnsServer, wire: bytes, count: int, *, udp: bool = True) -> float:
    started = time.perf_counter()
    for _ in range(count):
        server.answer(wire, udp=udp)
    return count / (time.perf_counter() - started)


async def in_process(endpoints: int, count: int) -> list[tuple[object, ...]]:
    registry, catalog = await build_catalog(endpoints)
    server = DnsServer(catalog, port=0, udp_rate_limit=None)
    rows: list[tuple[object, ...]] = []
    for label, wire in (("A (ClusterIP), cached", query(A_NAME, "A")),
                        ("SRV, cached (TC over UDP)", query(SRV_NAME, "SRV")),
                        ("A, unknown name (NXDOMAIN), cached", query("nope.shop.svc.cluster.local", "A"))):
        server.answer(wire, udp=True)
        rows.append((endpoints, label, f"{rate(server, wire, count):,.0f}", len(server.answer(wire, udp=True) or b"")))
    for label, wire, udp in (("A, first after a catalog change", query(A_NAME, "A"), True),
                             ("SRV over UDP, first after a change", query(SRV_NAME, "SRV"), True),
                             ("SRV over TCP, first after a change", query(SRV_NAME, "SRV"), False),
                             ("A headless over TCP, first after a change", query("heads.shop.svc.cluster.local", "A"),
                              False)):
        costs = []
        for _ in range(5):
            catalog.version += 1  # what every registry change does: the answer cache starts over
            started = time.perf_counter()
            reply = server.answer(wire, udp=udp)
            costs.append(time.perf_counter() - started)
        rows.append((endpoints, label, f"{1 / min(costs):,.0f} (best of 5: {min(costs) * 1000:.2f} ms)",
                     len(reply or b"")))
    await catalog.close()
    await registry.close()
    return rows


async def sizes(endpoints: int) -> list[tuple[object, ...]]:
    registry, catalog = await build_catalog(endpoints)
    server = DnsServer(catalog, port=0, udp_rate_limit=None)
    rows: list[tuple[object, ...]] = []
    for name, rdtype in ((SRV_NAME, "SRV"), (SRV_NAME, "ANY"), (A_NAME, "ANY"), (A_NAME, "A"),
                         ("heads.shop.svc.cluster.local", "A"), ("cluster.local", "ANY")):
        wire = query(name, rdtype, payload=65535)
        reply = server.answer(wire, udp=True) or b""
        truncated = bool(reply and reply[2] & 0x02)
        rows.append((endpoints, f"{rdtype} {name}", len(wire), len(reply), f"x{len(reply) / len(wire):.1f}",
                     "TC" if truncated else ""))
    await catalog.close()
    await registry.close()
    return rows


# -- UDP load: the responder in a child process ---------------------------------------------------------------------


async def serve(endpoints: int, limited: bool) -> None:
    registry, catalog = await build_catalog(endpoints)
    options = {} if limited else {"udp_rate_limit": None}
    server = DnsServer(catalog, port=0, **options)  # type: ignore[arg-type]
    await server.start()
    print(json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)  # the parent closing stdin (or writing) ends us
    try:
        async with asyncio.timeout(CHILD_LIFETIME):
            await stop.wait()
    except TimeoutError:
        pass
    print(json.dumps({"stats": dataclasses.asdict(server.stats)}), flush=True)
    await server.close()
    await catalog.close()
    await registry.close()


def udp_load(port: int, wire: bytes, total: int, seconds: float, window: int) -> tuple[int, int, float]:
    """Send ``wire`` keeping ``window`` queries in flight until ``total`` answers or ``seconds``; returns
    (answers, sent, elapsed). After 0.2 s without any answer the window is considered lost and refilled."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    sent = answers = in_flight = 0
    started = last_answer = time.perf_counter()
    deadline = started + seconds
    while answers < total and time.perf_counter() < deadline:
        while in_flight < window:
            sock.send(wire)
            sent += 1
            in_flight += 1
        ready, _, _ = select.select([sock], [], [], 0.05)
        if ready:
            while True:
                try:
                    sock.recv(4096)
                except BlockingIOError:
                    break
                answers += 1
                in_flight = max(0, in_flight - 1)
                last_answer = time.perf_counter()
        elif time.perf_counter() - last_answer > 0.2:
            in_flight = 0  # dropped (e.g. rate-limited): send again
            last_answer = time.perf_counter()
    elapsed = time.perf_counter() - started
    sock.close()
    return answers, sent, elapsed


def udp_rows(endpoints: int, total: int, seconds: float, window: int, limited: bool) -> list[tuple[object, ...]]:
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.dns_rate", "--serve", "--endpoints", str(endpoints)]
                             + (["--limited"] if limited else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        ready = json.loads(child.stdout.readline())
        process = psutil.Process(ready["pid"])
        rows: list[tuple[object, ...]] = []
        for label, wire in (("A (ClusterIP)", query(A_NAME, "A")), ("SRV (TC over UDP)", query(SRV_NAME, "SRV"))):
            udp_load(ready["port"], wire, min(total, 2000), 5.0, window)  # warm-up
            before = process.cpu_times()
            answers, _sent, elapsed = udp_load(ready["port"], wire, total, seconds, window)
            after = process.cpu_times()
            cpu = (after.user - before.user) + (after.system - before.system)
            per_core = answers / cpu if cpu > 0 else float("nan")
            rows.append((endpoints, label, "default 1,000/s per source" if limited else "off", f"{answers:,}",
                         f"{elapsed:.1f}", f"{answers / elapsed:,.0f}", f"{cpu:.1f}", f"{per_core:,.0f}"))
            if limited:
                break
        child.stdin.close()
        stats = json.loads(child.stdout.readline())["stats"]
        if limited:
            rows.append(("", f"responder stats: rate_limited={stats['rate_limited']:,}", "", "", "", "", "", ""))
        return rows
    finally:
        if child.poll() is None:
            child.terminate()
        child.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=200_000, help="answers per UDP run (at most)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time limit per UDP run")
    parser.add_argument("--window", type=int, default=64, help="UDP queries in flight")
    parser.add_argument("--in-process", type=int, default=100_000, help="answer() calls per in-process row")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--limited", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.endpoints, args.limited))
        return 0

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; {args.endpoints:,} endpoints behind one Service")
    print("\nin-process answer() (no sockets): answers per second of this process's time")
    rows = asyncio.run(in_process(300, args.in_process)) + asyncio.run(in_process(args.endpoints, args.in_process))
    print(render_table(("ENDPOINTS", "QUERY", "ANSWERS/S", "BYTES"), rows))
    print("\nUDP answer sizes to queries asking for a 65,535-byte EDNS buffer")
    print(render_table(("ENDPOINTS", "QUERY", "QUERY BYTES", "ANSWER BYTES", "RATIO", "FLAGS"),
                       asyncio.run(sizes(args.endpoints))))
    print(f"\nUDP over 127.0.0.1, responder alone in a child process, {args.window} queries in flight")
    rows = udp_rows(args.endpoints, args.queries, args.seconds, args.window, limited=False)
    rows += udp_rows(args.endpoints, args.queries, min(args.seconds, 5.0), args.window, limited=True)
    print(render_table(("ENDPOINTS", "QUERY (cached name)", "RATE LIMIT", "ANSWERS*", "SECONDS", "ANSWERS/S",
                        "RESPONDER CPU S", "ANSWERS/CPU-S"), rows))
    print("* with the limit on, every second refused query is answered with an empty TC reply (counted here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
