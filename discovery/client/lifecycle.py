"""Graceful shutdown (:func:`drain`) and an optional health-check hook (:class:`HealthCheck`).

Draining: set the registration ``DRAINING`` (every :class:`~discovery.client.cache.ServiceCache` stops picking it
within one watch round), wait for requests in flight to finish, then deregister.

Health checks: a callable run on an interval; its verdicts flip the registration between ``UP`` and
``DOWN`` (after ``rise`` successes / ``fall`` failures in a row). A ``DRAINING`` registration is left alone,
so a health check never undoes a drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from discovery.core.errors import NotRegisteredError, ValidationError
from discovery.core.models import Status
from discovery.core.tasks import cancel_and_wait
from discovery.registry.blocking import Registration
from discovery.registry.registration import AsyncRegistration

__all__ = ["AsyncHealthCheck", "DrainResult", "HealthCheck", "drain", "drain_async"]

log = logging.getLogger("discovery.client.lifecycle")

#: Default seconds between two idle probes while draining.
IDLE_POLL_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class DrainResult:
    """What a drain did: how long it waited and whether the idle probe was satisfied before the timeout.

    Immutable: safe to share between threads.
    """

    waited: float
    idle: bool


def _require_async_registration(registration: object, where: str, instead: str) -> AsyncRegistration:
    if isinstance(registration, AsyncRegistration):
        return registration
    if isinstance(registration, Registration):
        raise TypeError(f"{where} needs the AsyncRegistration of an AsyncRegistry, got a blocking Registration:"
                        f" use {instead}")
    raise TypeError(f"{where} needs an AsyncRegistration, got {type(registration).__name__}")


def _require_registration(registration: object, where: str, instead: str) -> Registration:
    if isinstance(registration, Registration):
        return registration
    if isinstance(registration, AsyncRegistration):
        raise TypeError(f"{where} needs the Registration of a blocking Registry, got an AsyncRegistration:"
                        f" use {instead}")
    raise TypeError(f"{where} needs a discovery.Registration, got {type(registration).__name__}")


def _check_drain_args(timeout: float, settle: float) -> None:
    if not timeout >= 0:
        raise ValidationError("timeout", f"must be >= 0 seconds, got {timeout!r}")
    if not settle >= 0:
        raise ValidationError("settle", f"must be >= 0 seconds, got {settle!r}")


async def drain_async(
    registration: AsyncRegistration,
    timeout: float = 10.0,
    *,
    idle: Callable[[], bool] | None = None,
    settle: float = 1.0,
) -> DrainResult:
    """Take ``registration`` out of service gracefully: set ``DRAINING``, wait, deregister.

    The wait lasts at least ``settle`` seconds (for clients' watches to see ``DRAINING``; capped by
    ``timeout``), then until ``idle()`` is true (no request in flight) or ``timeout`` seconds have passed in
    all. Without ``idle`` it waits the full ``timeout``. A registration that is already deregistered is left
    as it is. A blocking :class:`~discovery.Registration` is refused with ``TypeError`` (use :func:`drain`).
    """
    _require_async_registration(registration, "drain_async()", "drain()")
    _check_drain_args(timeout, settle)
    started = time.monotonic()
    if not registration.active:
        return DrainResult(0.0, True)
    with contextlib.suppress(NotRegisteredError):
        await registration.update(status=Status.DRAINING)
    deadline = started + timeout
    await asyncio.sleep(max(0.0, min(settle, timeout) - (time.monotonic() - started)))
    reached_idle = idle is None
    while True:
        if idle is not None and idle():
            reached_idle = True
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        await asyncio.sleep(min(IDLE_POLL_INTERVAL if idle is not None else remaining, remaining))
    await registration.deregister()
    return DrainResult(time.monotonic() - started, reached_idle)


def drain(
    registration: Registration,
    timeout: float = 10.0,
    *,
    idle: Callable[[], bool] | None = None,
    settle: float = 1.0,
) -> DrainResult:
    """The blocking form of :func:`drain_async` (it waits in the calling thread); an
    :class:`~discovery.AsyncRegistration` is refused with ``TypeError`` (use :func:`drain_async`).
    """
    _require_registration(registration, "drain()", "await drain_async()")
    _check_drain_args(timeout, settle)
    started = time.monotonic()
    if not registration.active:
        return DrainResult(0.0, True)
    with contextlib.suppress(NotRegisteredError):
        registration.update(status=Status.DRAINING)
    deadline = started + timeout
    time.sleep(max(0.0, min(settle, timeout) - (time.monotonic() - started)))
    reached_idle = idle is None
    while True:
        if idle is not None and idle():
            reached_idle = True
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(IDLE_POLL_INTERVAL if idle is not None else remaining, remaining))
    registration.deregister()
    return DrainResult(time.monotonic() - started, reached_idle)


class _Verdicts:
    """Turns a stream of check results into the status the registration should have (or ``None``: keep)."""

    def __init__(self, rise: int, fall: int) -> None:
        for name, value in (("rise", rise), ("fall", fall)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(name, f"must be an integer >= 1, got {value!r}")
        self.rise = rise
        self.fall = fall
        self._passes = 0
        self._failures = 0

    def record(self, healthy: bool, current: Status) -> Status | None:
        if healthy:
            self._passes, self._failures = self._passes + 1, 0
        else:
            self._passes, self._failures = 0, self._failures + 1
        if current is Status.DRAINING:
            return None
        if healthy and current is not Status.UP and self._passes >= self.rise:
            return Status.UP
        if not healthy and current is not Status.DOWN and self._failures >= self.fall:
            return Status.DOWN
        return None


def _check_interval(interval: float) -> float:
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
        raise ValidationError("interval", f"must be a positive number of seconds, got {interval!r}")
    return float(interval)


class HealthCheck:
    """Runs ``check()`` every ``interval`` seconds in a daemon thread and flips a blocking
    :class:`~discovery.Registration` between ``UP`` and ``DOWN``. A check that raises counts as unhealthy.
    A ``STARTING`` registration becomes ``UP`` after ``rise`` passing checks.

    Use as a context manager, or call :meth:`start` / :meth:`stop`.

    Thread-safe: it runs in its own thread; :meth:`start` and :meth:`stop` may be called from any other.
    """

    def __init__(
        self,
        registration: Registration,
        check: Callable[[], bool],
        interval: float = 5.0,
        *,
        rise: int = 1,
        fall: int = 1,
    ) -> None:
        self.registration = _require_registration(registration, "HealthCheck", "AsyncHealthCheck")
        self.check = check
        self.interval = _check_interval(interval)
        self._verdicts = _Verdicts(rise, fall)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checks = 0

    def start(self) -> HealthCheck:
        """Start checking (the first check runs at once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="discovery-health-check", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop checking and wait for the thread."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> HealthCheck:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set() and self.registration.active:
            try:
                healthy = bool(self.check())
            except Exception:
                log.warning("health check of %r raised; counted as unhealthy", self.registration, exc_info=True)
                healthy = False
            self.checks += 1
            wanted = self._verdicts.record(healthy, self.registration.instance.status)
            if wanted is not None and not self._stop.is_set():
                try:
                    self.registration.update(status=wanted)
                except NotRegisteredError:
                    return
                except Exception:
                    log.warning("could not set %r to %s", self.registration, wanted.value, exc_info=True)
            self._stop.wait(self.interval)


class AsyncHealthCheck:
    """The asyncio form of :class:`HealthCheck` for an :class:`~discovery.AsyncRegistration`: a task on the
    running loop. ``check`` may be a coroutine function; a plain function runs in a worker thread.

    Not thread-safe: start and stop it on the registry's event loop.
    """

    def __init__(
        self,
        registration: AsyncRegistration,
        check: Callable[[], bool] | Callable[[], Awaitable[bool]],
        interval: float = 5.0,
        *,
        rise: int = 1,
        fall: int = 1,
    ) -> None:
        self.registration = _require_async_registration(registration, "AsyncHealthCheck", "HealthCheck")
        self.check = check
        self.interval = _check_interval(interval)
        self._verdicts = _Verdicts(rise, fall)
        self._task: asyncio.Task[None] | None = None
        self.checks = 0

    def start(self) -> AsyncHealthCheck:
        """Start checking on the running loop (the first check runs at once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="discovery-health-check")
        return self

    async def stop(self) -> None:
        """Stop checking."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def __aenter__(self) -> AsyncHealthCheck:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _probe(self) -> bool:
        if inspect.iscoroutinefunction(self.check):
            return bool(await self.check())
        result = await asyncio.to_thread(self.check)
        if inspect.isawaitable(result):
            result = await result
        return bool(result)

    async def _run(self) -> None:
        while self.registration.active:
            try:
                healthy = await self._probe()
            except Exception:
                log.warning("health check of %r raised; counted as unhealthy", self.registration, exc_info=True)
                healthy = False
            self.checks += 1
            wanted = self._verdicts.record(healthy, self.registration.instance.status)
            if wanted is not None:
                try:
                    await self.registration.update(status=wanted)
                except NotRegisteredError:
                    return
                except Exception:
                    log.warning("could not set %r to %s", self.registration, wanted.value, exc_info=True)
            await asyncio.sleep(self.interval)
