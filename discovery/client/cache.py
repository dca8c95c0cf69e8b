"""``ServiceCache``: the client side of one service — its live instances and a pick, in the caller's thread.

A cache subscribes to the registry's shared watch of the service. Each snapshot is turned, on the
registry's loop, into an immutable :class:`PickState` (the candidates: matching status and selector; the
pickable: candidates minus instances set aside by failure feedback). A pick reads that one attribute and
hands its tuple to the balancer: no lock, no I/O, no thread hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from discovery.client.balancers import (
    Balancer,
    BalancerSpec,
    NoInstanceAvailableError,
    RequestTracking,
    RoundRobin,
    balancer_factory,
)
from discovery.client.feedback import DownInstancePolicy, FailureTracker, endpoint_of
from discovery.core.errors import ClosedError, DiscoveryError
from discovery.core.models import DEFAULT_NAMESPACE, Instance, Snapshot
from discovery.core.selectors import parse_selector
from discovery.core.validation import validate_namespace, validate_service_name
from discovery.observability.metrics import METRICS
from discovery.registry.async_registry import (
    DEFAULT_STATUSES,
    SelectorLike,
    StatusFilter,
    filter_instances,
    parse_statuses,
)
from discovery.registry.checks import require_async_registry, require_registry

if TYPE_CHECKING:
    from discovery.registry.async_registry import AsyncRegistry
    from discovery.registry.blocking import Registry

__all__ = ["PickState", "ServiceCache"]

log = logging.getLogger("discovery.client.cache")

#: How long ``open``/``open_async`` wait for the first snapshot by default (seconds).
DEFAULT_READY_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class PickState:
    """What a cache picks from, derived once per snapshot (and per change of the down set).

    Immutable: safe to share between threads.
    """

    snapshot: Snapshot | None
    candidates: tuple[Instance, ...]
    pickable: tuple[Instance, ...]
    #: Clock time at which a cool-down ends and ``pickable`` must be recomputed (``None``: nothing is down).
    recheck_at: float | None = None
    #: How many candidates are in their failure cool-down (all of them may be, and then all are pickable).
    set_aside: int = 0


_EMPTY = PickState(None, (), ())


class ServiceCache:
    """The live instances of one service and a balanced pick from them.

    Open one with :meth:`open` (blocking :class:`~discovery.Registry`) or :meth:`open_async`
    (:class:`~discovery.AsyncRegistry`); both wait for the first snapshot. Only ``UP`` instances are picked
    by default (``statuses=``), optionally narrowed by a label ``selector``. Report call outcomes with
    :meth:`note_error` / :meth:`note_success`; see :mod:`discovery.client.feedback`.

    Thread-safe: pick, feedback and reads from any thread (readers take no lock, writers serialise on one); update
    callbacks run on the registry's loop.
    """

    def __init__(
        self,
        service: str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        balancer: BalancerSpec | None = None,
        selector: SelectorLike = None,
        statuses: StatusFilter = DEFAULT_STATUSES,
        failures: FailureTracker | DownInstancePolicy | None = None,
    ) -> None:
        self.service = validate_service_name(service)
        self.namespace = validate_namespace(namespace)
        self.balancer: Balancer = balancer_factory(balancer)() if balancer is not None else RoundRobin()
        # Checked once: isinstance against a runtime-checkable Protocol costs microseconds per call.
        self._tracking: RequestTracking | None = self.balancer if isinstance(self.balancer, RequestTracking) else None
        self._selector = parse_selector(selector)
        self._statuses = parse_statuses(statuses)
        if isinstance(failures, FailureTracker):
            self.failures = failures
        else:
            self._check_policy(failures)
            self.failures = FailureTracker(failures)
        self._state = _EMPTY
        self._write_lock = threading.Lock()
        self._ready = threading.Event()
        self._listeners: list[Callable[[ServiceCache], None]] = []
        self._unsubscribe: Callable[[], Any] | None = None
        self._opened_async = False
        self._closed = False

    @staticmethod
    def _check_policy(policy: object) -> None:
        if policy is not None and not isinstance(policy, DownInstancePolicy):
            from discovery.core.errors import ValidationError

            raise ValidationError("failures", f"expected a FailureTracker or DownInstancePolicy, got {policy!r}")

    # -- opening and closing -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        registry: Registry,
        service: str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        ready_timeout: float | None = DEFAULT_READY_TIMEOUT,
        **options: Any,
    ) -> ServiceCache:
        """Follow ``service`` through a blocking registry; returns once the first snapshot arrived
        (``TimeoutError`` after ``ready_timeout``). ``options`` are the constructor's keyword arguments.
        An :class:`~discovery.AsyncRegistry` is refused with ``TypeError`` (use :meth:`open_async`).
        """
        require_registry(
            registry, "ServiceCache.open()", "use await ServiceCache.open_async(registry, ...) on its event loop"
        )
        cache = cls(service, namespace, **options)
        cache._unsubscribe = registry.subscribe(service, cache.feed, namespace, on_end=cache._registry_closed)
        if not cache._ready.wait(ready_timeout):
            cache.close()
            raise TimeoutError(f"no snapshot of {namespace}/{service} within {ready_timeout} s")
        if cache._closed and cache._state.snapshot is None:
            raise ClosedError(f"the registry closed before the first snapshot of {namespace}/{service}")
        return cache

    @classmethod
    async def open_async(
        cls,
        registry: AsyncRegistry,
        service: str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        ready_timeout: float | None = DEFAULT_READY_TIMEOUT,
        **options: Any,
    ) -> ServiceCache:
        """Follow ``service`` through an asyncio registry (call on its loop); returns once the first snapshot
        arrived (``TimeoutError`` after ``ready_timeout``). Close it with :meth:`aclose`.
        A blocking :class:`~discovery.Registry` is refused with ``TypeError`` (use :meth:`open`).
        """
        require_async_registry(
            registry, "ServiceCache.open_async()", "use ServiceCache.open(registry, ...) from blocking code"
        )
        cache = cls(service, namespace, **options)
        cache._opened_async = True
        ready = asyncio.Event()
        remove = cache.on_update(lambda _cache: ready.set())
        cache._unsubscribe = registry.subscribe(service, cache.feed, namespace, on_end=cache._registry_closed)
        try:
            if cache._state.snapshot is None:
                async with asyncio.timeout(ready_timeout):
                    await ready.wait()
        except TimeoutError:
            await cache.aclose()
            raise TimeoutError(f"no snapshot of {namespace}/{service} within {ready_timeout} s") from None
        finally:
            remove()
        if cache._closed and cache._state.snapshot is None:
            raise ClosedError(f"the registry closed before the first snapshot of {namespace}/{service}")
        return cache

    @property
    def closed(self) -> bool:
        """Whether the cache stopped following its service (closed, or its registry closed)."""
        return self._closed

    def _registry_closed(self) -> None:
        """The registry closed under the cache: it follows nothing any more, and says so."""
        self._closed = True
        self._unsubscribe = None
        self._ready.set()  # an open() still waiting for the first snapshot gives up now
        self._notify()

    def close(self) -> None:
        """Stop following the service (for a cache made by :meth:`open`)."""
        if self._opened_async:
            raise RuntimeError("this cache was opened with open_async(); close it with aclose()")
        self._closed = True
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    async def aclose(self) -> None:
        """Stop following the service (for a cache made by :meth:`open_async`)."""
        self._closed = True
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            result = unsubscribe()
            if asyncio.iscoroutine(result):
                await result

    def __enter__(self) -> ServiceCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> ServiceCache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- being fed ----------------------------------------------------------------------------------------

    def feed(self, snapshot: Snapshot) -> None:
        """Take a new snapshot (the watch subscription calls this; usable directly to drive a cache by hand)."""
        if self._closed:
            return
        candidates = filter_instances(snapshot.instances, self._selector, self._statuses)
        with self._write_lock:
            before = self._state
            self._state = state = self._derive(snapshot, candidates)
        self._report_set_aside(before, state)
        self._ready.set()
        self._notify()

    def on_update(self, callback: Callable[[ServiceCache], None]) -> Callable[[], None]:
        """Call ``callback(cache)`` after every new snapshot (on the registry's loop). Returns a remover."""
        self._listeners.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return remove

    def _notify(self) -> None:
        for callback in list(self._listeners):
            callback(self)

    def _derive(self, snapshot: Snapshot | None, candidates: tuple[Instance, ...]) -> PickState:
        down = self.failures.down() if candidates else {}
        if not down:
            return PickState(snapshot, candidates, candidates)
        pickable = tuple(i for i in candidates if endpoint_of(i) not in down)
        relevant = [down[endpoint_of(i)] for i in candidates if endpoint_of(i) in down]
        recheck_at = min(relevant) if relevant else None
        # Never set every instance aside: a fully failed set is better served than refused.
        return PickState(snapshot, candidates, pickable or candidates, recheck_at, len(relevant))

    def _refresh(self) -> PickState:
        # Writers (the loop's feed, callers' feedback) serialise so a refresh never overwrites a newer
        # snapshot with one derived from an older one; readers never take the lock.
        with self._write_lock:
            before = self._state
            self._state = state = self._derive(before.snapshot, before.candidates)
        self._report_set_aside(before, state)
        return state

    def _report_set_aside(self, before: PickState, after: PickState) -> None:
        if after.set_aside != before.set_aside:
            log.info("%s/%s: %d of %d instances set aside by failure feedback", self.namespace, self.service,
                     after.set_aside, len(after.candidates))
            if METRICS.active:
                METRICS.set_aside(self.namespace, self.service, after.set_aside)

    # -- reading ------------------------------------------------------------------------------------------

    @property
    def state(self) -> PickState:
        """The current pick state (immutable)."""
        return self._state

    @property
    def snapshot(self) -> Snapshot | None:
        """The last snapshot received (``None`` before the first)."""
        return self._state.snapshot

    @property
    def stale(self) -> bool:
        """Whether the backend is unreachable and the cache is serving the last good set."""
        snapshot = self._state.snapshot
        return snapshot is not None and snapshot.stale

    def instances(self) -> tuple[Instance, ...]:
        """The candidates: instances with a picked status (default ``UP``) matching the selector."""
        return self._state.candidates

    def pickable(self) -> tuple[Instance, ...]:
        """What :meth:`pick` chooses from now: the candidates minus instances in their failure cool-down."""
        state = self._state
        if state.recheck_at is not None and self.failures.clock() >= state.recheck_at:
            state = self._refresh()
        return state.pickable

    def pick(self, key: str | None = None) -> Instance:
        """One instance, chosen by the balancer; :class:`NoInstanceAvailableError` when there is none,
        :class:`ClosedError` once the cache is closed (it no longer follows the service).
        """
        if self._closed:
            raise self._none_available()
        state = self._state
        if state.recheck_at is not None and self.failures.clock() >= state.recheck_at:
            state = self._refresh()
        try:
            instance = self.balancer.pick(state.pickable, key)
        except NoInstanceAvailableError:
            raise self._none_available() from None
        if METRICS.active:
            METRICS.pick(instance)
        return instance

    def pick_excluding(self, tried: Collection[Instance], key: str | None = None) -> Instance:
        """A pick that avoids ``tried`` instances (for a retry); falls back to any when all were tried."""
        if self._closed:
            raise self._none_available()
        pickable = self.pickable()
        if tried:
            skip = {endpoint_of(i) for i in tried}
            untried = tuple(i for i in pickable if endpoint_of(i) not in skip)
            if untried:
                pickable = untried
        try:
            instance = self.balancer.pick(pickable, key)
        except NoInstanceAvailableError:
            raise self._none_available() from None
        if METRICS.active:
            METRICS.pick(instance)
        return instance

    def _none_available(self) -> DiscoveryError:
        if METRICS.active:
            METRICS.pick_failed(self.namespace, self.service, "closed" if self._closed else "no-instance")
        if self._closed:
            return ClosedError(f"the cache of {self.namespace}/{self.service} is closed")
        total = 0 if self._state.snapshot is None else len(self._state.snapshot)
        return NoInstanceAvailableError(
            f"no instance of {self.namespace}/{self.service} to pick ({total} registered, none with a picked status)"
        )

    # -- feedback -----------------------------------------------------------------------------------------

    def note_error(self, instance: Instance) -> None:
        """A call to ``instance`` failed; enough failures set it aside for the policy's cool-down."""
        if self.failures.note_error(instance):
            self._refresh()

    def note_success(self, instance: Instance) -> None:
        """A call to ``instance`` succeeded: its error count is cleared (and it is back if it was down)."""
        if self.failures.note_success(instance):
            self._refresh()

    def started(self, instance: Instance) -> None:
        """Tell a request-tracking balancer that a request to ``instance`` started."""
        if self._tracking is not None:
            self._tracking.started(instance)

    def finished(self, instance: Instance) -> None:
        """Tell a request-tracking balancer that a request to ``instance`` finished."""
        if self._tracking is not None:
            self._tracking.finished(instance)

    @contextlib.contextmanager
    def track(self, key: str | None = None) -> Iterator[Instance]:
        """Pick an instance for one call and report its outcome::

            with cache.track() as instance:
                call(instance)

        An exception from the block counts as an error of that instance (and is re-raised); a clean exit
        as a success. Requests in flight are counted for :class:`~discovery.client.balancers.PowerOfTwoChoices`.
        """
        instance = self.pick(key)
        self.started(instance)
        try:
            yield instance
        except BaseException:
            self.note_error(instance)
            raise
        else:
            self.note_success(instance)
        finally:
            self.finished(instance)
