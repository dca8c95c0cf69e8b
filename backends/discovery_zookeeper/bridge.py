"""Bridging kazoo's threads to asyncio.

kazoo completes requests and calls listeners and watchers on its own threads. Nothing here ever blocks such a
thread: completions and events are handed to the event loop with ``call_soon_threadsafe``, and every request
is awaited with a timeout (a request made while disconnected waits in kazoo's queue until the reconnect).

A reply or a watch event reaches the loop straight from kazoo's connection thread: the client's handler
(:class:`LoopHandler`) makes results (:class:`LoopResult`) that schedule the loop's side themselves when they are
set, instead of ``rawlink`` callbacks, which kazoo runs on its completion thread, and it runs watchers that only
hand over to a loop (:class:`LoopWatcher`) where the event arrives, instead of on its callback thread. Each saves
one thread wake-up (and one more thread contending for the GIL) per reply or event.

Three more costs of kazoo's per-request path are cut here, each measured in a profile of a ZooKeeper sync
(docs/decisions/zookeeper-writes.md): everything a kazoo thread hands to one loop goes through one queue
(:class:`_Inbox`), so a burst of replies wakes the loop once, not once per reply; a result builds its
``threading.Condition`` only if a thread ever blocks on it (:class:`_LazyCondition`; the loop never does);
and the handler's ``select`` polls (one ``poll`` object, one system call) instead of building, filling and
closing a new epoll selector on every turn of kazoo's connection loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import select
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, OperationTimeoutError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.handlers.utils import AsyncResult

from discovery.core.errors import BackendUnavailableError

T = TypeVar("T")

#: kazoo errors that mean "the server is not reachable right now" rather than "the request is wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionLoss,
    ConnectionClosedError,
    SessionExpiredError,
    OperationTimeoutError,
)


class _Inbox:
    """What other threads hand to one loop, run there in the order handed over, with one wake-up per burst.

    ``call_soon_threadsafe`` writes to the loop's self-pipe and queues a handle for every call; a sync reading
    thousands of znodes hands over thousands of replies that arrive together. Here the first hand-over of a burst
    schedules one :meth:`_drain`; the rest only append (``deque.append`` is atomic). The flag is cleared *before*
    draining, so an item appended during a drain is either drained by it or schedules the next one.
    """

    __slots__ = ("_items", "_scheduled")  # no reference to the loop: it keys the weak map of inboxes

    def __init__(self) -> None:
        self._items: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._scheduled = False

    def put(self, loop: asyncio.AbstractEventLoop, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._items.append((callback, args))
        if not self._scheduled:
            self._scheduled = True
            try:
                loop.call_soon_threadsafe(self._drain, loop)
            except RuntimeError:
                self._items.clear()  # the loop is closed: nothing handed to it runs any more

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        items = self._items
        while items:
            callback, args = items.popleft()
            try:
                callback(*args)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as error:  # as the loop treats a failing callback: reported, the rest still run
                loop.call_exception_handler(
                    {"message": f"Exception in callback {callback!r} handed over from kazoo", "exception": error}
                )


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()
_inboxes_lock = threading.Lock()


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    inbox = _inboxes.get(loop)
    if inbox is None:
        with _inboxes_lock:
            inbox = _inboxes.get(loop)
            if inbox is None:
                inbox = _inboxes[loop] = _Inbox()
    return inbox


def call_in_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> None:
    """Schedule ``callback(*args)`` on ``loop`` from any thread, after everything handed to it before (from any
    thread); a closed loop drops it silently.
    """
    _inbox(loop).put(loop, callback, args)


def _settle(future: asyncio.Future[Any], async_result: Any) -> None:
    if future.done():
        return
    exception = async_result.exception
    if exception is not None:
        future.set_exception(_own_copy(exception))
    else:
        future.set_result(async_result.value)


def _own_copy(error: BaseException) -> BaseException:
    """A copy of a failed request's error for the awaiting side to raise. kazoo's result keeps the original, and the
    awaiting frames (which hold that result) end up in the traceback of the error they raise: raising the original
    would make every failed request a reference cycle, freed only by the cyclic garbage collector."""
    try:
        return copy.copy(error)
    except Exception:  # an exception type that cannot be rebuilt from its args: raise it as it is
        return error


class _LazyCondition:
    """The part of ``threading.Condition`` kazoo's ``AsyncResult`` uses, over a re-entrant lock (as the default
    condition's), building the real condition only when a thread waits: the results the loop awaits are never
    waited on, and building a ``threading.Condition`` per request was ~15 % of the loop's time in a sync.
    Every method runs with the lock held (kazoo takes it first), so building it in :meth:`wait` races nothing.
    """

    __slots__ = ("_condition", "_lock")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._condition: threading.Condition | None = None

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        if self._condition is None:
            self._condition = threading.Condition(self._lock)
        return self._condition.wait(timeout)

    def notify_all(self) -> None:
        if self._condition is not None:
            self._condition.notify_all()


class LoopResult(AsyncResult):  # type: ignore[misc]  # kazoo is untyped
    """kazoo's threading ``AsyncResult`` (same base, same timeout error) that can also settle an asyncio future
    itself, from the thread that sets it (see the module docs). Without :meth:`settle_on` it behaves as kazoo's.
    """

    def __init__(self, handler: Any) -> None:
        super().__init__(handler, _LazyCondition, KazooTimeoutError)
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
        # Taken, not read: a result the caller keeps must not keep the settled future (and the error in it) alive.
        target, self._target = self._target, None
        if target is not None:
            call_in_loop(target[0], _settle, target[1], self)


class LoopWatcher:
    """A kazoo watcher that only schedules ``function(event)`` on ``loop``: it never blocks, so :class:`LoopHandler`
    runs it on the thread the event arrives on. Make one per watch and pass the same object each time (kazoo keeps
    a set of watchers per path).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, function: Callable[..., object]) -> None:
        self._loop = loop
        self._function: Callable[..., object] | None = function

    def __call__(self, *args: Any) -> None:
        function = self._function
        if function is not None:
            call_in_loop(self._loop, function, *args)

    def disarm(self) -> None:
        """Ignore every event from now on, and let go of the function. kazoo keeps a one-shot watcher until its
        event fires, and the function is usually a method of the object that made the watcher: disarmed, neither
        keeps that object alive nor forms a reference cycle with it once it has ended."""
        self._function = None


class LoopHandler(SequentialThreadingHandler):  # type: ignore[misc]  # kazoo is untyped
    """kazoo's threading handler (its documented handler interface), making :class:`LoopResult` results and running
    :class:`LoopWatcher` watchers at once; every other callback goes to kazoo's callback thread as before.
    """

    def async_result(self) -> LoopResult:
        """A result that can settle an asyncio future straight from kazoo's connection thread."""
        return LoopResult(self)

    def select(self, *args: Any, **kwargs: Any) -> tuple[list[Any], list[Any], list[Any]]:
        """kazoo's ``select(rlist, wlist, xlist, timeout)``, answered by one ``poll`` call (see the module docs);
        kazoo's own selector where ``poll`` is missing.
        """
        if _HAS_POLL and not kwargs and len(args) == 4:
            return _poll_select(*args)
        return super().select(*args, **kwargs)  # type: ignore[no-any-return]

    def dispatch_callback(self, callback: Any) -> None:
        """Run a :class:`LoopWatcher` now; queue anything else for the callback thread (kazoo's behaviour)."""
        if isinstance(callback.func, LoopWatcher):
            callback.func(*callback.args)
        else:
            super().dispatch_callback(callback)


_HAS_POLL = hasattr(select, "poll")
_READ = select.POLLIN | select.POLLPRI if _HAS_POLL else 0
_WRITE = select.POLLOUT if _HAS_POLL else 0


def _poll_select(
    rlist: list[Any], wlist: list[Any], xlist: list[Any], timeout: float | None
) -> tuple[list[Any], list[Any], list[Any]]:
    """What kazoo's ``selector_select`` answers (xlist ignored, as there; a file both readable and writable is
    reported readable only), by ``poll``, which has no descriptor limit either. An error or hang-up on a file
    counts as ready for what it was asked for, as with ``selectors``.
    """
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"bad select timeout {timeout!r}")
    wanted: dict[int, int] = {}
    files: dict[int, list[Any]] = {}
    for fileobjs, mask in ((rlist, _READ), (wlist, _WRITE)):
        for fileobj in fileobjs:
            fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
            if fd < 0:
                raise ValueError("Invalid event mask or fd")
            wanted[fd] = wanted.get(fd, 0) | mask
            files.setdefault(fd, []).append(fileobj)
    poller = select.poll()
    for fd, mask in wanted.items():
        poller.register(fd, mask)
    # poll counts milliseconds: round up, or a timeout under 1 ms would spin until it passes.
    ready = poller.poll(None if timeout is None else math.ceil(timeout * 1000))
    readable: list[Any] = []
    writable: list[Any] = []
    for fd, happened in ready:
        mask = wanted.get(fd, 0)
        if happened & ~select.POLLOUT and mask & _READ:
            readable.extend(files[fd])
        elif happened & ~_READ and mask & _WRITE:
            writable.extend(files[fd])
    return readable, writable, []


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def settled_future(loop: asyncio.AbstractEventLoop, async_result: Any) -> asyncio.Future[Any]:
    """A future of ``loop`` settled with a kazoo ``IAsyncResult``'s outcome once it is set (no timeout: kazoo
    fails every pending request when the connection drops)."""
    future: asyncio.Future[Any] = loop.create_future()
    if isinstance(async_result, LoopResult):
        async_result.settle_on(loop, future)
    else:
        async_result.rawlink(lambda result: call_in_loop(loop, _settle, future, result))
    return future


async def await_kazoo(async_result: Any, timeout: float, what: str) -> Any:
    """Await a kazoo ``IAsyncResult`` without blocking; raise ``BackendUnavailableError`` on timeout/connection loss.

    Other kazoo exceptions (``NoNodeError``, ``NodeExistsError``, ``BadVersionError``...) propagate as they are.
    """
    loop = asyncio.get_running_loop()
    future = settled_future(loop, async_result)
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
        # A failed future holds its exception, whose traceback holds this frame: without these references every
        # failed request (a read of a node just deleted) is a reference cycle left to the garbage collector.
        del future, async_result


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
