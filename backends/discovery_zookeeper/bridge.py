"""Bridging kazoo's threads to asyncio.

kazoo completes requests and calls listeners and watchers on its own threads. Nothing here ever blocks such a
thread: completions and events are handed to the event loop with ``call_soon_threadsafe``, and every request
is awaited with a timeout (a request made while disconnected waits in kazoo's queue until the reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, OperationTimeoutError, SessionExpiredError

from discovery.core.errors import BackendUnavailableError

T = TypeVar("T")

#: kazoo errors that mean "the server is not reachable right now" rather than "the request is wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionLoss,
    ConnectionClosedError,
    SessionExpiredError,
    OperationTimeoutError,
)


def call_in_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> None:
    """Schedule ``callback(*args)`` on ``loop`` from any thread; a closed loop drops it silently."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _settle(future: asyncio.Future[Any], async_result: Any) -> None:
    if future.done():
        return
    exception = async_result.exception
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(async_result.value)


async def await_kazoo(async_result: Any, timeout: float, what: str) -> Any:
    """Await a kazoo ``IAsyncResult`` without blocking; raise ``BackendUnavailableError`` on timeout/connection loss.

    Other kazoo exceptions (``NoNodeError``, ``NodeExistsError``, ``BadVersionError``...) propagate as they are.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    async_result.rawlink(lambda result: call_in_loop(loop, _settle, future, result))
    try:
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancel() that arrives just as the reply does, and
        # a watch task that ignores its cancellation makes registry.close() hang forever.
        async with asyncio.timeout(timeout):
            return await future
    except TimeoutError:
        raise BackendUnavailableError(f"ZooKeeper did not answer {what} within {timeout:g}s") from None
    except CONNECTION_ERRORS as lost:
        raise BackendUnavailableError(f"ZooKeeper connection lost during {what}: {type(lost).__name__}") from lost


def _settle_call(future: asyncio.Future[Any], error: BaseException | None, value: Any) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


async def in_own_thread(function: Callable[..., T], *args: Any, name: str) -> T:
    """Run a blocking ``function(*args)`` in a thread of its own that ends when it returns.

    Not ``run_in_executor``: a pooled thread outlives the call, and a backend that failed to start (or was
    closed) must leave no thread behind. If the awaiting task is cancelled, the call still runs to its end.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            value = function(*args)
        except BaseException as error:  # handed to the awaiting task, never lost in the thread
            call_in_loop(loop, _settle_call, future, error, None)
        else:
            call_in_loop(loop, _settle_call, future, None, value)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


async def finish(awaitable: Any) -> Any:
    """Await cleanup to its end even if the awaiting task is cancelled meanwhile (the cancellation is re-raised)."""
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise
