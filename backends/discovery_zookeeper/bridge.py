"""Bridging kazoo's threads to asyncio.

kazoo completes requests and calls listeners and watchers on its own threads. Nothing here ever blocks such a
thread: completions and events are handed to the event loop with ``call_soon_threadsafe``, and every request
is awaited with a timeout (a request made while disconnected waits in kazoo's queue until the reconnect).

A reply or a watch event reaches the loop straight from kazoo's connection thread: the client's handler
(:class:`LoopHandler`) makes results (:class:`LoopResult`) that schedule the loop's side themselves when they are
set, instead of ``rawlink`` callbacks, which kazoo runs on its completion thread, and it runs watchers that only
hand over to a loop (:class:`LoopWatcher`) where the event arrives, instead of on its callback thread. Each saves
one thread wake-up (and one more thread contending for the GIL) per reply or event.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, OperationTimeoutError, SessionExpiredError
from kazoo.handlers.threading import AsyncResult, SequentialThreadingHandler

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


class LoopResult(AsyncResult):  # type: ignore[misc]  # kazoo is untyped
    """kazoo's threading ``AsyncResult`` that can also settle an asyncio future itself, from the thread that
    sets it (see the module docs). Without :meth:`settle_on` it is kazoo's result, unchanged.
    """

    def __init__(self, handler: Any) -> None:
        super().__init__(handler)
        self._target: tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]] | None = None

    def set(self, value: Any = None) -> None:
        """Store the value (kazoo), then settle the future on its loop."""
        super().set(value)
        self._hand_over()

    def set_exception(self, exception: BaseException) -> None:
        """Store the exception (kazoo), then settle the future on its loop."""
        super().set_exception(exception)
        self._hand_over()

    def settle_on(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        """Settle ``future`` on ``loop`` with this result once it is set (at once if it is already)."""
        self._target = (loop, future)
        if self.ready():
            # Set meanwhile by another thread, which may also hand over: settling twice is a no-op.
            self._hand_over()

    def _hand_over(self) -> None:
        target = self._target
        if target is not None:
            call_in_loop(target[0], _settle, target[1], self)


class LoopWatcher:
    """A kazoo watcher that only schedules ``function(event)`` on ``loop``: it never blocks, so :class:`LoopHandler`
    runs it on the thread the event arrives on. Make one per watch and pass the same object each time (kazoo keeps
    a set of watchers per path).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, function: Callable[..., object]) -> None:
        self._loop = loop
        self._function = function

    def __call__(self, *args: Any) -> None:
        call_in_loop(self._loop, self._function, *args)


class LoopHandler(SequentialThreadingHandler):  # type: ignore[misc]  # kazoo is untyped
    """kazoo's threading handler (its documented handler interface), making :class:`LoopResult` results and running
    :class:`LoopWatcher` watchers at once; every other callback goes to kazoo's callback thread as before.
    """

    def async_result(self) -> LoopResult:
        """A result that can settle an asyncio future straight from kazoo's connection thread."""
        return LoopResult(self)

    def dispatch_callback(self, callback: Any) -> None:
        """Run a :class:`LoopWatcher` now; queue anything else for the callback thread (kazoo's behaviour)."""
        if isinstance(callback.func, LoopWatcher):
            callback.func(*callback.args)
        else:
            super().dispatch_callback(callback)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


async def await_kazoo(async_result: Any, timeout: float, what: str) -> Any:
    """Await a kazoo ``IAsyncResult`` without blocking; raise ``BackendUnavailableError`` on timeout/connection loss.

    Other kazoo exceptions (``NoNodeError``, ``NodeExistsError``, ``BadVersionError``...) propagate as they are.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    if isinstance(async_result, LoopResult):
        async_result.settle_on(loop, future)
    else:
        async_result.rawlink(lambda result: call_in_loop(loop, _settle, future, result))
    # A timer that fails the future, not asyncio.timeout (a context object per request) nor asyncio.wait_for
    # (on Python 3.11 it swallows a cancel() that arrives just as the reply does, and a watch task that ignores
    # its cancellation makes registry.close() hang forever): cancelling the caller cancels the bare future.
    timer = loop.call_later(timeout, _expire, future)
    try:
        return await future
    except TimeoutError:
        raise BackendUnavailableError(f"ZooKeeper did not answer {what} within {timeout:g}s") from None
    except CONNECTION_ERRORS as lost:
        raise BackendUnavailableError(f"ZooKeeper connection lost during {what}: {type(lost).__name__}") from lost
    finally:
        timer.cancel()


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
