"""A fault-injecting TCP relay between a client and a server, for partition tests (loopback only).

    with Relay("127.0.0.1", server.port) as relay:      # listens on a free 127.0.0.1 port
        url = f"etcd://{relay.address}/prefix"           # the client talks to the relay
        relay.blackhole()                                # partition: bytes are held, not delivered
        relay.pass_through()                             # healed: held bytes flow again

Modes (switched from any thread; each call returns once the relay applies it):

* ``pass_through()`` - forward every byte both ways.
* ``blackhole()`` - a partition: nothing is read or delivered in either direction and new connections are
  accepted but not connected upstream until the mode changes. Bytes are held, never dropped, exactly as TCP
  keeps retransmitting across a real partition; a client that gives up closes its own connection.
* ``delay(seconds)`` - forward, but hold every chunk ``seconds`` first (latency, order kept).
* ``cut()`` - reset every open connection (RST) and reset new ones at once, until the mode changes.

The relay runs its own asyncio loop in a daemon thread, so a busy or blocked test loop never stalls it.
Hand-written (about 150 lines): toxiproxy would be a Go service to install and drive over HTTP, and no
Python package offers an in-process relay with these modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_CHUNK = 65536


class Mode(enum.Enum):
    """What the relay does with traffic."""

    PASS = "pass"
    BLACKHOLE = "blackhole"
    DELAY = "delay"
    CUT = "cut"


def _require_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the relay is loopback-only; {host!r} is not a loopback address")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a cut cable or a dropped conntrack entry looks to the peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Relay:
    """Forwards ``listen_host:<free port>`` to ``target_host:target_port``; see the module docs for the modes."""

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        _require_loopback(target_host)
        _require_loopback(listen_host)
        self.target = (target_host, target_port)
        self.host = listen_host
        self.port = 0
        self._mode = Mode.PASS
        self._delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"relay-{target_port}", daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Connections accepted since start (tests check that the client really went through the relay).
        self.accepted = 0

    @property
    def address(self) -> str:
        """``host:port`` to give the client."""
        return f"{self.host}:{self.port}"

    @property
    def mode(self) -> Mode:
        """The current mode."""
        return self._mode

    def start(self) -> Relay:
        """Listen on a free port and start relaying."""
        self._thread.start()
        self._run(self._start())
        return self

    def pass_through(self) -> None:
        """Forward everything (heals a blackhole, a delay or a cut)."""
        self._run(self._set(Mode.PASS, 0.0))

    def blackhole(self) -> None:
        """Hold every byte in both directions, and new connections, until the mode changes."""
        self._run(self._set(Mode.BLACKHOLE, 0.0))

    def delay(self, seconds: float) -> None:
        """Forward with ``seconds`` of extra latency per chunk."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._run(self._set(Mode.DELAY, seconds))

    def cut(self) -> None:
        """Reset every connection now, and every new one, until the mode changes."""
        self._run(self._set(Mode.CUT, 0.0))

    def close(self) -> None:
        """Reset every connection, stop listening and end the thread."""
        if not self._thread.is_alive():
            return
        self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- on the relay's loop ---------------------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _set(self, mode: Mode, delay: float) -> None:
        assert self._flowing is not None
        self._mode, self._delay = mode, delay
        if mode is Mode.BLACKHOLE:
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode is Mode.CUT:
            self._reset_all()

    async def _close(self) -> None:
        assert self._flowing is not None
        self._mode = Mode.CUT
        self._flowing.set()  # connections held by a blackhole wake up, see CUT and reset themselves
        if self._server is not None:
            self._server.close()
        self._reset_all()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _reset_all(self) -> None:
        for client, upstream in list(self._links):
            _reset(client)
            if upstream is not None:
                _reset(upstream)
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None and self._flowing is not None
        self._tasks.add(task)
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
        self._links.add(link)
        try:
            await self._flowing.wait()  # a connection made during a blackhole waits, as a SYN retransmits
            if self._mode is Mode.CUT or link not in self._links:
                _reset(writer)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _reset(writer)  # the server is down: the client sees a refused/reset connection
                return
            self._links.discard(link)
            link = (writer, up_writer)
            self._links.add(link)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except asyncio.CancelledError:
            pass  # closing: asyncio's server callback would report a cancelled handler as an error
        finally:
            self._links.discard(link)
            for side in link:
                if side is not None:
                    side.transport.abort()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    break
                await self._flowing.wait()  # read just before a blackhole began: hold it, do not drop it
                if self._delay > 0:
                    await asyncio.sleep(self._delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # Either side closing ends the link: abort both (the gather in _accept then finishes).
            writer.transport.abort()
            reader.feed_eof()
