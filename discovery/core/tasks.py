"""asyncio helpers the backends share: ending a background task from the code that owns it, one lock per key."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has ended; an error it ended with is raised, as awaiting it would.

    A cancellation of the *caller* meanwhile is raised too. The idiom this replaces,
    ``task.cancel(); with suppress(CancelledError): await task``, cannot tell the task's cancellation from the
    caller's and swallowed both: a caller cancelled while stopping a helper task (a registry's ``deregister()``
    ending the watch that followed its record) went on running, and a loop around it never ended.
    """
    task.cancel()
    await asyncio.wait({task})  # raises CancelledError only when the caller is cancelled
    if task.cancelled():
        # A cancelled task keeps its CancelledError until someone asks for it, and that error's traceback holds the
        # task's frames, whose `self` usually holds the task: a reference cycle per stopped task (a watch that ended
        # is garbage only the cyclic collector frees). Asking for it once hands it over and lets the task go.
        with contextlib.suppress(asyncio.CancelledError):
            task.result()
        return
    error = task.exception()
    if error is not None:
        raise error


class KeyLocks:
    """One lock per key, alive only while someone holds or awaits it: orders the writes of one key.

    A process may register and deregister ever new ids; a lock kept per key it ever wrote would grow without bound.
    """

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        """Hold the key's lock for the ``async with`` block."""
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
