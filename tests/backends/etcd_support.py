"""Helpers for the etcd backend tests: following a backend watch, a raw aetcd client, a gate on reconnects."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aetcd

from discovery.core.models import Snapshot
from discovery.core.plugins import create_backend
from discovery_etcd import EtcdBackend
from discovery_etcd.watch import ServiceWatch

T = TypeVar("T")


class Follower:
    """Reads a backend watch in a task of its own (as the registry's watch hub does: a backend watch is a plain
    stream that only moves while someone reads it) and keeps every snapshot :meth:`until` went through.
    """

    def __init__(self, stream: AsyncIterator[Snapshot]) -> None:
        self.stream = stream
        self.seen: list[Snapshot] = []
        self._arrived: asyncio.Queue[Snapshot | Exception] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for snapshot in self.stream:
                self._arrived.put_nowait(snapshot)
            self._arrived.put_nowait(StopAsyncIteration())
        except Exception as error:
            self._arrived.put_nowait(error)

    async def until(self, accept: Callable[[Snapshot], bool], timeout: float) -> Snapshot:
        """The first snapshot (the last one seen included) that ``accept`` holds for; AssertionError on time-out."""
        if self.seen and accept(self.seen[-1]):
            return self.seen[-1]
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                arrived = await asyncio.wait_for(self._arrived.get(), max(0.001, remaining))
            except TimeoutError:
                last = self.seen[-1] if self.seen else None
                raise AssertionError(f"no matching snapshot within {timeout:.1f} s; last: {last!r}") from None
            if isinstance(arrived, Exception):
                raise arrived
            self.seen.append(arrived)
            if accept(arrived):
                return arrived

    async def close(self) -> None:
        """Stop the watch."""
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.stream.aclose()  # type: ignore[attr-defined]


async def eventually(probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float) -> T:
    """Poll ``probe`` until ``accept`` holds; AssertionError with the last value on time-out."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout:.1f} s; last value: {value!r}")
        await asyncio.sleep(0.05)


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"/etcd-test-{uuid.uuid4().hex}"


async def started_backend(url: str) -> EtcdBackend:
    """A started etcd backend for ``url``."""
    backend = create_backend(url)
    assert isinstance(backend, EtcdBackend)
    await backend.start()
    return backend


def raw_client(host: str, port: int) -> Any:
    """A plain aetcd client, to act on etcd from outside the backend."""
    return aetcd.Client(host=host, port=port, timeout=5)


class ReconnectGate:
    """Holds a watch stream's reconnects until :meth:`open` (through its ``before_reconnect`` test seam), so a test
    can change etcd while the watch is away.
    """

    def __init__(self, watch: ServiceWatch) -> None:
        self.opened = asyncio.Event()
        self.waiting = asyncio.Event()

        async def gate() -> None:
            self.waiting.set()
            await self.opened.wait()

        watch.before_reconnect = gate

    def open(self) -> None:
        """Let the watch reconnect."""
        self.opened.set()
