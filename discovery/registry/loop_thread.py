"""A private event loop running in a daemon thread, for the blocking facade."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from discovery.core.errors import ClosedError

T = TypeVar("T")

#: How long :meth:`LoopThread.stop` lets the loop finish cancelled tasks and the default executor.
_STOP_GRACE = 10.0


class _Call(Generic[T]):
    """One coroutine handed from a caller's thread to the loop thread, and its outcome.

    The caller blocks on a bare lock that the coroutine's own task releases as its last step. This is what
    ``asyncio.run_coroutine_threadsafe`` does with a ``concurrent.futures.Future`` (a condition variable) and a
    done callback (one more loop iteration); the lock is about half the cost per call (benchmarks/facade.py).
    """

    __slots__ = ("_abandoned", "_coroutine", "_error", "_finished", "_result", "_task")

    def __init__(self, coroutine: Coroutine[Any, Any, T]) -> None:
        self._coroutine = coroutine
        self._finished = threading.Lock()
        self._finished.acquire()
        self._result: T | None = None
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._abandoned = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the coroutine in a task on ``loop`` (called in the loop thread)."""
        if self._abandoned:  # the caller gave up before the loop got to it
            self._coroutine.close()
            return
        self._task = loop.create_task(self._run())
        self._task.add_done_callback(self._ended)

    async def _run(self) -> None:
        try:
            self._result = await self._coroutine
        except BaseException as error:
            self._error = error
            if not isinstance(error, Exception):
                raise  # cancellation and interpreter exits stay what they are for the task too
        finally:
            self._release()

    def _ended(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never enters _run's body: say so to the caller here.
        if self._finished.locked() and self._error is None:
            self._error = asyncio.CancelledError()
        self._release()

    def _release(self) -> None:
        if self._finished.locked():
            self._finished.release()

    def fail(self, error: BaseException) -> None:
        """End the call with ``error`` unless it has ended (the loop stopped without running it to the end)."""
        if self._finished.locked() and self._error is None:
            self._error = error
        self._release()

    def abandon(self) -> None:
        """The caller stopped waiting: cancel the task (called in the loop thread)."""
        self._abandoned = True
        if self._task is not None:
            self._task.cancel()

    def wait(self, timeout: float | None) -> bool:
        """Block until the outcome is known; ``False`` if ``timeout`` seconds passed first."""
        return self._finished.acquire(timeout=-1 if timeout is None else timeout)

    def outcome(self) -> T:
        """The coroutine's result, or raise its error."""
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]  # set by _run when there is no error


class LoopThread:
    """Runs an asyncio event loop forever in its own thread; :meth:`run` executes a coroutine there."""

    def __init__(self, name: str = "discovery-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._stopping = threading.Event()
        self._calls: set[_Call[Any]] = set()  # calls handed over and not yet answered
        # Functions submitted and not yet run, and whether a run of them is scheduled on the loop (see submit).
        self._submitted: collections.deque[Callable[[], object]] = collections.deque()
        self._drain_scheduled = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # Whatever is still pending (a call that raced stop()) is cancelled and run to its end, and the
            # default executor's threads are joined: a stopped registry leaves no task and no thread behind.
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending, timeout=_STOP_GRACE))
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()
            # A call handed over as the loop stopped, and never started, must not block its caller forever.
            for call in list(self._calls):
                call.fail(ClosedError("this registry was closed during the call"))

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` has been called."""
        return self._stopping.is_set()

    @property
    def in_loop_thread(self) -> bool:
        """Whether the caller is the loop's own thread (where blocking on it would deadlock)."""
        return threading.current_thread() is self._thread

    def refuse_loop_thread(self) -> None:
        """Raise ``RuntimeError`` in the loop's own thread: a blocking call there would deadlock on a backend
        with I/O, so it is refused on every backend (code that works on memory works on the others).
        """
        if self.in_loop_thread:
            raise RuntimeError("a blocking discovery call was made from a discovery callback; use the async API")

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and block until it finishes (or ``timeout`` seconds pass).

        Raises :class:`ClosedError` once the loop is stopped (the registry closed), also for a call that was
        waiting when it stopped.
        """
        if self.in_loop_thread:
            coroutine.close()
            self.refuse_loop_thread()
        if self._stopping.is_set():
            coroutine.close()
            raise ClosedError("this registry is closed")
        call = _Call(coroutine)
        self._calls.add(call)
        try:
            try:
                self.loop.call_soon_threadsafe(call.start, self.loop)
            except RuntimeError:  # the loop closed between the check and the call
                coroutine.close()
                raise ClosedError("this registry is closed") from None
            if not call.wait(timeout):
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing left to cancel
                    self.loop.call_soon_threadsafe(call.abandon)
                raise TimeoutError(f"the call did not finish within {timeout} s")
            try:
                return call.outcome()
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    raise ClosedError("this registry was closed during the call") from None
                raise
        finally:
            self._calls.discard(call)

    def submit(self, function: Callable[[], object]) -> None:
        """Run ``function()`` on the loop soon, without waiting for it (calls run in the order submitted, and before
        any :meth:`run` submitted later). ``ClosedError`` once the loop is stopped."""
        if self._stopping.is_set():
            raise ClosedError("this registry is closed")
        # One wake-up of the loop for a burst of submissions, not one each: call_soon_threadsafe writes to the
        # loop's self-pipe every time, and 10 000 subscriptions in a row spent ~0.3 s of the caller's thread there
        # (py-spy, the etcd scale probe). The order holds: the drain scheduled for the first of a burst is queued
        # on the loop before anything a later call hands over, and the flag is cleared before the drain reads the
        # queue, so a function appended while it is set is always read by a drain still to come or under way.
        self._submitted.append(function)
        if self._drain_scheduled:
            return
        self._drain_scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed
            raise ClosedError("this registry is closed") from None

    def _drain(self) -> None:
        """Run the submitted functions, in order (in the loop thread). One that raises is reported as a failed
        loop callback is, and the rest still run."""
        self._drain_scheduled = False
        submitted = self._submitted
        while submitted:
            function = submitted.popleft()
            try:
                function()
            except Exception as error:
                self.loop.call_exception_handler(
                    {"message": "a function submitted to the loop thread failed", "exception": error}
                )

    def stop(self) -> None:
        """Stop the loop and join the thread (which first ends pending tasks and the default executor)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread:
            self._thread.join(timeout=_STOP_GRACE * 2)
