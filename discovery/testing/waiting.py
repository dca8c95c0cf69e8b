"""Waiting with a deadline, for tests of a backend: poll a probe until it answers as expected (:func:`eventually`),
or read a watch until a snapshot matches (:class:`Follower`). Never a sleep as synchronisation: both return as
soon as the condition holds and raise AssertionError, with the last value seen, at the deadline.

No pytest needed: the kit's conformance suite uses them, and so can any test or script.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from discovery.core.models import Snapshot

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float, interval: float = 0.05
) -> T:
    """Poll ``probe`` until ``accept`` holds for its result; raise AssertionError with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout:.1f} s; last value: {value!r}")
        await asyncio.sleep(interval)


class Follower:
    """Reads a watch (an async iterator of snapshots, e.g. ``backend.watch(namespace, service)``) in a task of its
    own - as the registry's watch hub does: a backend watch is a plain stream that only moves while someone reads
    it - and keeps every snapshot :meth:`until` went through in :attr:`seen`. Create it on a running loop."""

    def __init__(self, stream: AsyncIterator[Snapshot]) -> None:
        self.stream = stream
        self.seen: list[Snapshot] = []
        self._arrived: asyncio.Queue[Snapshot | BaseException] = asyncio.Queue()
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
            if isinstance(arrived, BaseException):
                raise arrived
            self.seen.append(arrived)
            if accept(arrived):
                return arrived

    async def close(self) -> None:
        """Stop reading and close the watch."""
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        close = getattr(self.stream, "aclose", None)  # an async generator; a plain iterator has nothing to stop
        if close is not None:
            await close()
