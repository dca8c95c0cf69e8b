"""Polling with a deadline (never a sleep as synchronisation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

#: How long a change may take to reach a client on a healthy backend (not a performance bound).
CONVERGENCE_TIMEOUT = 15.0


def wait_until(condition: Callable[[], bool], timeout: float = CONVERGENCE_TIMEOUT, what: str = "condition") -> float:
    """Poll ``condition`` until true; returns the seconds it took. AssertionError at the deadline."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not met within {timeout:.1f} s")
        time.sleep(0.005)
    return time.monotonic() - started


async def wait_until_async(
    condition: Callable[[], bool], timeout: float = CONVERGENCE_TIMEOUT, what: str = "condition"
) -> float:
    """The asyncio form of :func:`wait_until`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not met within {timeout:.1f} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started
