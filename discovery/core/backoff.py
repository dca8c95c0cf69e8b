"""Delays from tenacity's wait strategies, for retry loops that cannot be tenacity's own.

A watch stream must yield between two attempts (the last set, marked stale, while the server is away), and an
async generator cannot yield from inside ``AsyncRetrying`` or its callbacks. Such a loop counts its failures
itself and asks the strategy how long to wait; jitter and growth stay tenacity's.
"""

from __future__ import annotations

from tenacity import AsyncRetrying, RetryCallState
from tenacity.wait import wait_base

_NO_RETRYING = AsyncRetrying()


def retry_delay(strategy: wait_base, failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1 = the first), as ``strategy`` decides."""
    state = RetryCallState(_NO_RETRYING, fn=None, args=(), kwargs={})
    state.attempt_number = failures
    return float(strategy(state))
