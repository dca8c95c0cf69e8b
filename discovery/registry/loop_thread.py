"""A private event loop running in a daemon thread, for the blocking facade."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from discovery.core.errors import ClosedError

T = TypeVar("T")

#: How long :meth:`LoopThread.stop` lets the loop finish cancelled tasks and the default executor.
_STOP_GRACE = 10.0


class LoopThread:
    """Runs an asyncio event loop forever in its own thread; :meth:`run` executes a coroutine there."""

    def __init__(self, name: str = "discovery-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._stopping = threading.Event()
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

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` has been called."""
        return self._stopping.is_set()

    @property
    def in_loop_thread(self) -> bool:
        """Whether the caller is the loop's own thread (where blocking on it would deadlock)."""
        return threading.current_thread() is self._thread

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and block until it finishes (or ``timeout`` seconds pass).

        Raises :class:`ClosedError` once the loop is stopped (the registry closed), also for a call that was
        waiting when it stopped.
        """
        if self.in_loop_thread:
            coroutine.close()
            raise RuntimeError("a blocking discovery call was made from a discovery callback; use the async API")
        if self._stopping.is_set():
            coroutine.close()
            raise ClosedError("this registry is closed")
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        except RuntimeError:  # the loop closed between the check and the call
            coroutine.close()
            raise ClosedError("this registry is closed") from None
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise
        except concurrent.futures.CancelledError:
            if self._stopping.is_set():
                raise ClosedError("this registry was closed during the call") from None
            raise

    def stop(self) -> None:
        """Stop the loop and join the thread (which first ends pending tasks and the default executor)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread:
            self._thread.join(timeout=_STOP_GRACE * 2)
