"""How much of a ZooKeeper registration is kazoo's connection thread: what a client completing requests on the event
loop would give the ZooKeeper backend, measured before building one (issue 20's ZooKeeper rows).

    python -m benchmarks.zookeeper_transport [--servers process|container] [--creates N] [--rounds N]
        [--paced N] [--pace SECONDS]

kazoo runs every connection in a thread of its own: a request the loop sends wakes that thread to write it, and its
answer wakes the loop again; a blocking caller of this library's ``Registry`` adds its own hand-off to the loop and
back. kazoo's own blocking ``create`` (the scenario-2 anchor) has only the caller <-> kazoo-thread pair. This script
times one ephemeral create of a record-sized znode, one at a time, through each transport, on one server:

* kazoo ``create`` called from a thread (the raw client, the anchor);
* kazoo ``create_async`` answered on an asyncio loop (:class:`discovery_zookeeper.bridge.LoopHandler`, the backend's
  transport today);
* a minimal asyncio ZooKeeper connection (:class:`LoopConnection`: the handshake, requests framed with kazoo's own
  serialization classes and answered in order, pings; no reconnects, no watches: a measuring stub, not a client),
  awaited on its loop, and called from another thread through a
  :class:`~discovery.registry.loop_thread.LoopThread` (what a blocking ``Registry`` over such a client would pay);
* this library's ``AsyncRegistry.register`` and blocking ``Registry.register`` (a ``multi``, validation, the
  registration's bookkeeping and the read-your-writes wait on its own watch).

Back to back (``--creates``: every thread is busy, as in scenario 2) and paced (``--paced`` creates ``--pace`` s
apart: every thread sleeps between them, as in scenario 1's propagation). Each transport takes its turn per round,
so that a drift of the machine falls on all alike. The numbers are for notes and docs/benchmarks.md, not asserted;
tests/test_zookeeper_transport.py runs it small to keep it working.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.protocol.serialization import Connect, Create, Ping, ReplyHeader, int_int_struct
from kazoo.security import OPEN_ACL_UNSAFE

from discovery.core.models import Instance
from discovery.registry.async_registry import AsyncRegistry
from discovery.registry.blocking import Registry
from discovery.registry.loop_thread import LoopThread
from discovery_zookeeper.bridge import LoopHandler, settled_future
from tests.harness import start_server

RECORD = b"x" * 340  # about the size of this library's record
EPHEMERAL = 1  # CreateMode flag
_FRAME = struct.Struct("!i")
_PING_XID = -2
_WATCH_XID = -1


class LoopConnection(asyncio.Protocol):
    """A ZooKeeper session on one connection whose requests are sent and answered on the event loop.

    A measuring stub: the handshake, requests framed with kazoo's serialization classes, answers matched in order,
    pings at a third of the session timeout; no reconnects, no watches, no authentication.
    """

    def __init__(self, session_timeout_ms: int = 10_000) -> None:
        self._session_timeout_ms = session_timeout_ms
        self._buffer = bytearray()
        self._pending: dict[int, tuple[asyncio.Future[Any], Any]] = {}
        self._xid = 0
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.session: asyncio.Future[Connect] = self._loop.create_future()
        self._pinger: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> LoopConnection:
        """Connect and wait for the session."""
        _, connection = await asyncio.get_running_loop().create_connection(cls, host, port)
        await connection.session
        connection.start_pinging()
        return connection

    def start_pinging(self) -> None:
        """Keep the session alive (once it is established)."""
        self._pinger = asyncio.create_task(self._ping_forever())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._write(Connect(0, 0, self._session_timeout_ms, 0, b"\x00" * 16, False).serialize())

    def connection_lost(self, exc: Exception | None) -> None:
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the ZooKeeper connection closed"))
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= _FRAME.size:
            (length,) = _FRAME.unpack_from(self._buffer, 0)
            if len(self._buffer) < _FRAME.size + length:
                return
            frame = bytes(self._buffer[_FRAME.size:_FRAME.size + length])
            del self._buffer[:_FRAME.size + length]
            if not self.session.done():
                self.session.set_result(Connect.deserialize(frame, 0)[0])
                continue
            header, offset = ReplyHeader.deserialize(frame, 0)
            if header.xid in (_PING_XID, _WATCH_XID):
                continue
            future, request = self._pending.pop(header.xid)
            if header.err:
                future.set_exception(RuntimeError(f"ZooKeeper error {header.err}"))
            else:
                future.set_result(request.deserialize(frame, offset))

    def request(self, request: Any) -> asyncio.Future[Any]:
        """Send ``request`` (a kazoo request tuple); a future of its answer."""
        self._xid += 1
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[self._xid] = (future, request)
        self._write(int_int_struct.pack(self._xid, request.type) + request.serialize())
        return future

    def _write(self, body: bytes | bytearray) -> None:
        assert self._transport is not None
        self._transport.write(_FRAME.pack(len(body)) + body)

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(self._session_timeout_ms / 3000)
            self._write(int_int_struct.pack(_PING_XID, Ping.type) + Ping.serialize())

    def close(self) -> None:
        """Stop pinging and drop the connection (the server expires the session)."""
        if self._pinger is not None:
            self._pinger.cancel()
        if self._transport is not None:
            self._transport.close()


#: One create at a time, timed by the caller: ``create(number)`` makes the ``number``-th znode.
Timed = Callable[[int], None]


def _timings(create: Timed, count: int, pace: float, first: int) -> list[float]:
    """Seconds per create of ``count`` creates, ``pace`` s apart (untimed)."""
    latencies = []
    for number in range(first, first + count):
        if pace:
            time.sleep(pace)
        started = time.perf_counter()
        create(number)
        latencies.append(time.perf_counter() - started)
    return latencies


async def _timings_on_loop(create: Callable[[int], Awaitable[Any]], count: int, pace: float,
                           first: int) -> list[float]:
    latencies = []
    for number in range(first, first + count):
        if pace:
            await asyncio.sleep(pace)
        started = time.perf_counter()
        await create(number)
        latencies.append(time.perf_counter() - started)
    return latencies


WARM_UP = 50


def kazoo_blocking(host: str, port: int, base: str, count: int, pace: float) -> list[float]:
    """kazoo's blocking ``create`` from this thread."""
    client = KazooClient(hosts=f"{host}:{port}")
    client.start()
    try:
        def create(number: int) -> None:
            client.create(f"{base}/n{number}", RECORD, ephemeral=True)

        _timings(create, WARM_UP, 0.0, 0)
        return _timings(create, count, pace, WARM_UP)
    finally:
        client.stop()
        client.close()


async def kazoo_on_loop(host: str, port: int, base: str, count: int, pace: float) -> list[float]:
    """kazoo's ``create_async`` answered on this loop, as the backend's requests are."""
    client = KazooClient(hosts=f"{host}:{port}", handler=LoopHandler())
    await asyncio.to_thread(client.start)
    loop = asyncio.get_running_loop()
    try:
        def create(number: int) -> Awaitable[Any]:
            return settled_future(loop, client.create_async(f"{base}/n{number}", RECORD, ephemeral=True))

        await _timings_on_loop(create, WARM_UP, 0.0, 0)
        return await _timings_on_loop(create, count, pace, WARM_UP)
    finally:
        await asyncio.to_thread(client.stop)
        client.close()


async def loop_connection(host: str, port: int, base: str, count: int, pace: float) -> list[float]:
    """The loop-native stub, awaited on its loop."""
    connection = await LoopConnection.open(host, port)
    try:
        def create(number: int) -> Awaitable[Any]:
            return connection.request(Create(f"{base}/n{number}", RECORD, OPEN_ACL_UNSAFE, EPHEMERAL))

        await _timings_on_loop(create, WARM_UP, 0.0, 0)
        return await _timings_on_loop(create, count, pace, WARM_UP)
    finally:
        connection.close()


def loop_connection_blocking(host: str, port: int, base: str, count: int, pace: float) -> list[float]:
    """The loop-native stub on a LoopThread, called from this thread (one hand-off each way, as the facade's)."""
    runner = LoopThread("transport-benchmark")
    try:
        connection = runner.run(LoopConnection.open(host, port))

        async def create_on_loop(number: int) -> Any:
            return await connection.request(Create(f"{base}/n{number}", RECORD, OPEN_ACL_UNSAFE, EPHEMERAL))

        def create(number: int) -> None:
            runner.run(create_on_loop(number))

        _timings(create, WARM_UP, 0.0, 0)
        latencies = _timings(create, count, pace, WARM_UP)
        runner.submit(connection.close)
        return latencies
    finally:
        runner.stop()


def _instance(number: int) -> Instance:
    return Instance("transport", f"n{number}", "127.0.0.1", 9000)


async def ours_async(host: str, port: int, base: str, count: int, pace: float) -> list[float]:
    """This library's ``AsyncRegistry.register``."""
    async with await AsyncRegistry.connect(f"zookeeper://{host}:{port}{base}") as registry:
        async def create(number: int) -> Any:
            return await registry.register(_instance(number))

        await _timings_on_loop(create, WARM_UP, 0.0, 0)
        return await _timings_on_loop(create, count, pace, WARM_UP)


def ours_blocking(host: str, port: int, base: str, count: int, pace: float) -> list[float]:
    """This library's blocking ``Registry.register``."""
    with Registry.connect(f"zookeeper://{host}:{port}{base}") as registry:
        def create(number: int) -> None:
            registry.register(_instance(number))

        _timings(create, WARM_UP, 0.0, 0)
        return _timings(create, count, pace, WARM_UP)


TRANSPORTS: dict[str, tuple[str, Callable[..., Any]]] = {
    "kazoo": ("kazoo `create`, blocking (the anchor)", kazoo_blocking),
    "kazoo-loop": ("kazoo `create_async` answered on the loop (the backend's transport)", kazoo_on_loop),
    "loop": ("asyncio connection, on its loop", loop_connection),
    "loop-blocking": ("asyncio connection via a LoopThread, blocking caller", loop_connection_blocking),
    "ours-async": ("this library: `AsyncRegistry.register`", ours_async),
    "ours-blocking": ("this library: blocking `Registry.register`", ours_blocking),
}


def _measure(name: str, host: str, port: int, base: str, count: int, pace: float) -> tuple[list[float], float]:
    """Seconds per create, and process CPU µs per create (every thread, the server's excluded)."""
    _, function = TRANSPORTS[name]
    cpu = time.process_time()
    if asyncio.iscoroutinefunction(function):
        latencies = asyncio.run(function(host, port, base, count, pace))
    else:
        latencies = function(host, port, base, count, pace)
    return latencies, (time.process_time() - cpu) / (count + WARM_UP) * 1e6


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _table(title: str, measured: dict[str, list[tuple[list[float], float]]], with_cpu: bool) -> None:
    print(f"## {title}\n")
    cpu_column = " process CPU µs / create |" if with_cpu else ""
    print(f"| transport | p50 µs | p90 µs | p99 µs | vs kazoo p50 |{cpu_column}")
    print("|---|---:|---:|---:|---:|" + ("---:|" if with_cpu else ""))
    anchor = statistics.median(t for latencies, _ in measured["kazoo"] for t in latencies)
    for name, rounds in measured.items():
        ordered = sorted(t for latencies, _ in rounds for t in latencies)
        p50 = statistics.median(ordered)
        cpu = f" {statistics.median(c for _, c in rounds):.0f} |" if with_cpu else ""
        print(f"| {TRANSPORTS[name][0]} | {p50 * 1e6:.0f} | {_percentile(ordered, 0.9) * 1e6:.0f} | "
              f"{_percentile(ordered, 0.99) * 1e6:.0f} | {p50 / anchor:.2f}x |{cpu}")
    print()


def main(argv: list[str]) -> int:
    """Start a ZooKeeper server, time every transport back to back and paced, print both tables."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zookeeper_transport")
    parser.add_argument("--servers", default="process", choices=("process", "container"))
    parser.add_argument("--creates", type=int, default=1000, help="back-to-back creates per transport and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paced", type=int, default=200, help="paced creates per transport and round")
    parser.add_argument("--pace", type=float, default=0.01)
    args = parser.parse_args(argv)
    back_to_back: dict[str, list[tuple[list[float], float]]] = {name: [] for name in TRANSPORTS}
    paced: dict[str, list[tuple[list[float], float]]] = {name: [] for name in TRANSPORTS}
    with start_server("zookeeper", args.servers) as server:
        stamp = time.monotonic_ns()
        admin = KazooClient(hosts=f"{server.host}:{server.port}")
        admin.start()
        try:
            for number in range(args.rounds):
                for name in TRANSPORTS:  # in turns: a drift of the machine falls on every transport alike
                    for shape, count, pace, into in (("hot", args.creates, 0.0, back_to_back),
                                                     ("paced", args.paced, args.pace, paced)):
                        base = f"/transport-{stamp}/{name}-{number}-{shape}"
                        admin.ensure_path(base)
                        into[name].append(_measure(name, server.host, server.port, base, count, pace))
        finally:
            admin.stop()
            admin.close()
    print(f"ZooKeeper at {server.host}:{server.port} ({args.servers}); {threading.active_count()} threads left\n")
    _table(f"One ephemeral create at a time, back to back: {args.creates} per transport and round, "
           f"{args.rounds} rounds", back_to_back, with_cpu=True)
    _table(f"Paced: {args.paced} creates {args.pace} s apart per transport and round, {args.rounds} rounds",
           paced, with_cpu=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
