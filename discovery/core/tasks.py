"""asyncio helpers the backends share: ending a background task from the code that owns it, one lock per key."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable
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
        self._locks: dict[Hashable, _KeyLock] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def hold(self, key: Hashable) -> _KeyLock:
        """The key's lock, to hold for an ``async with`` block (use it only that way: the key is forgotten when the
        last block that entered it leaves)."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = _KeyLock(self._locks, key)
        return lock


class _KeyLock:
    """An ``asyncio.Lock`` that counts who holds or awaits it and drops its key when the count is back to zero
    (a class, not a generator-based context manager: this is on every registration's path, at a third of the cost).
    """

    __slots__ = ("_key", "_lock", "_locks", "_users")

    def __init__(self, locks: dict[Hashable, _KeyLock], key: Hashable) -> None:
        self._locks = locks
        self._key = key
        self._lock = asyncio.Lock()
        self._users = 0

    async def __aenter__(self) -> None:
        self._users += 1
        try:
            await self._lock.acquire()
        except BaseException:  # cancelled while waiting: it never held the lock
            self._leave()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()
        self._leave()

    def _leave(self) -> None:
        self._users -= 1
        if self._users == 0:
            del self._locks[self._key]
