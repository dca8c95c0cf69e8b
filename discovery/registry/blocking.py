"""``Registry``: the blocking facade. It runs an :class:`AsyncRegistry` on one background loop thread.

Lookups of a watched service are answered from the cached snapshot in the caller's thread, without a hop to the
loop thread. So is every write and read that needs no I/O (the memory backend: the registry's ``*_now``
methods), unless a watch of the written service must show the write first (read-your-writes); only the rest is
handed to the loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from discovery.core.backend import Capabilities, LostReason, RegistrationState
from discovery.core.connection import ConnectionListener, ConnectionState, ConnectionStatus
from discovery.core.errors import ClosedError, NotRegisteredError
from discovery.core.models import DEFAULT_NAMESPACE, Instance, Snapshot, Status
from discovery.core.selectors import parse_selector
from discovery.core.urls import BackendURL
from discovery.core.validation import validate_namespace, validate_service_name
from discovery.registry.async_registry import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_STATUSES,
    AsyncRegistry,
    SelectorLike,
    StatusFilter,
    filter_instances,
    parse_statuses,
)
from discovery.registry.health import RegistryHealth
from discovery.registry.loop_thread import LoopThread
from discovery.registry.registration import AsyncRegistration
from discovery.registry.watch_hub import EndCallback, SnapshotCallback

_MAX_REMEMBERED_LOOKUPS = 1024


class Registration:
    """Blocking handle of a registration (see :class:`discovery.registry.registration.AsyncRegistration`).

    Thread-safe: every call runs on the registry's loop thread, or in the caller's where no I/O is needed; do not
    call it from a callback (the loop thread).
    """

    def __init__(self, inner: AsyncRegistration, loop: LoopThread, core: AsyncRegistry) -> None:
        self._inner = inner
        self._loop = loop
        self._core = core

    def _now(self) -> bool:
        instance = self._inner.instance
        return self._inner.immediate and self._core.writes_now(instance.namespace, instance.service)

    def __repr__(self) -> str:
        return repr(self._inner)

    @property
    def instance(self) -> Instance:
        """The instance as last written."""
        return self._inner.instance

    @property
    def ttl(self) -> float:
        """The effective TTL in seconds."""
        return self._inner.ttl

    @property
    def detection_bound(self) -> float:
        """Worst-case seconds for this instance to disappear after its process dies."""
        return self._inner.detection_bound

    @property
    def state(self) -> RegistrationState:
        """The current state."""
        return self._inner.state

    @property
    def history(self) -> tuple[RegistrationState, ...]:
        """Every state so far, in order."""
        return self._inner.history

    @property
    def lost_reason(self) -> LostReason | None:
        """Why the registration was last ``LOST`` (see :attr:`AsyncRegistration.lost_reason`)."""
        return self._inner.lost_reason

    @property
    def active(self) -> bool:
        """Whether it is still kept alive."""
        return self._inner.active

    def on_change(self, callback: Callable[[Registration, RegistrationState], None]) -> Callable[[], None]:
        """Call ``callback(registration, state)`` on each change (in the loop thread; must not block)."""
        return self._inner.on_change(lambda _inner, state: callback(self, state))

    def on_instance_change(self, callback: Callable[[Registration, Instance], None]) -> Callable[[], None]:
        """Call ``callback(registration, instance)`` when someone else changed this registration's record and it
        adopted the change (see :meth:`AsyncRegistration.on_instance_change`; in the loop thread, must not block)."""
        return self._inner.on_instance_change(lambda _inner, instance: callback(self, instance))

    def wait_for(self, state: RegistrationState, timeout: float | None = None) -> None:
        """Block until the registration has been in ``state`` (``TimeoutError`` after ``timeout``)."""
        if state in self._inner.history:
            return  # also after the registry closed: the history is all there is to look at
        self._loop.run(self._inner.wait_for(state, timeout))

    def update(self, **changes: Any) -> Instance:
        """Rewrite the instance with changed fields (``status=``, ``labels=``, ``weight=``, …).

        :class:`NotRegisteredError` once deregistered (closing the registry deregisters it).
        """
        if not self._inner.active:
            raise NotRegisteredError(f"{self!r} is deregistered")
        if self._now():
            self._loop.refuse_loop_thread()
            return self._inner.update_now(**changes)
        return self._loop.run(self._inner.update(**changes))

    def deregister(self) -> None:
        """Remove the instance (idempotent: also after its registry closed, which deregistered it)."""
        if not self._inner.active:
            return
        if self._now():
            self._loop.refuse_loop_thread()
            self._inner.deregister_now()
        else:
            self._loop.run(self._inner.deregister())


class _Ended:
    """Queued after the last snapshot of a watch that ended."""


_ENDED = _Ended()


class Watch:
    """Blocking iterator of snapshots (the current one first). Close it, or use it as a context manager.

    Closing it (from any thread) or closing its registry ends every ``for`` loop over it (``StopIteration``);
    :meth:`next` and :meth:`until` raise :class:`ClosedError` on an ended watch. Thread-safe, but meant for one
    consumer: two threads iterating one watch split its snapshots between them.
    """

    def __init__(self, registry: Registry, service: str, namespace: str) -> None:
        self._registry = registry
        self._service = service
        self._namespace = namespace
        self._queue: queue.SimpleQueue[Snapshot | _Ended] = queue.SimpleQueue()
        self._ended = False
        self._unsubscribe = registry.subscribe(service, self._queue.put, namespace, on_end=self._end)

    @property
    def closed(self) -> bool:
        """Whether the watch has ended (closed, or its registry closed)."""
        return self._ended

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put(_ENDED)

    def __iter__(self) -> Iterator[Snapshot]:
        return self

    def __next__(self) -> Snapshot:
        return self._take(None)

    def _take(self, timeout: float | None) -> Snapshot:
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._registry.async_registry
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                raise TimeoutError(f"no snapshot of {self._namespace}/{self._service} within {timeout} s") from None
            if isinstance(item, _Ended):
                self._queue.put(item)  # every later call ends as well
                raise StopIteration
            # Monotonic reads: skip a snapshot older than one the registry already handed out (a newer one is
            # queued behind it), as AsyncWatch does.
            if item.revision >= core.handed_out_revision(self._service, self._namespace):
                core.note_handed_out(item)
                return item

    def next(self, timeout: float | None = None) -> Snapshot:
        """The next snapshot, waiting at most ``timeout`` seconds (``TimeoutError`` after);
        :class:`ClosedError` once the watch has ended.
        """
        try:
            return self._take(timeout)
        except StopIteration:
            raise ClosedError(f"the watch of {self._namespace}/{self._service} is closed") from None

    def until(self, predicate: Callable[[Snapshot], bool], timeout: float) -> Snapshot:
        """Consume snapshots until one satisfies ``predicate``; ``TimeoutError`` after ``timeout`` seconds,
        :class:`ClosedError` if the watch ends first.
        """
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.next(max(0.0, deadline - time.monotonic()))
            if predicate(snapshot):
                return snapshot

    def close(self) -> None:
        """Stop watching; a loop iterating this watch (in any thread) ends."""
        if self._ended:
            return
        self._end()
        self._unsubscribe()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Registry:
    """Blocking registry: ``with Registry.connect("etcd://127.0.0.1:2379") as registry: ...``.

    Thread-safe: any method from any thread, except from a callback running in the registry's own loop thread (that
    would deadlock, so it raises ``RuntimeError``).
    """

    def __init__(self, core: AsyncRegistry, loop: LoopThread) -> None:
        self._core = core
        self._loop = loop
        # (service, namespace, selector, statuses) -> (snapshot, filtered result); valid while the snapshot is.
        self._lookups: dict[tuple[object, ...], tuple[Snapshot, tuple[Instance, ...]]] = {}
        # One blocking handle per registration, so registering a held id again returns the same object, while the
        # caller holds it: keyed by the registration's id(), weakly by the handle. (Keyed weakly by the registration
        # itself, the handle, which holds its registration, kept the key alive: every registration made through
        # this facade stayed in memory until the registry went away.) A key's registration lives as long as its
        # entry: the handle holds it, so the id() is not reused meanwhile.
        self._handles: weakref.WeakValueDictionary[int, Registration] = weakref.WeakValueDictionary()
        self._handles_lock = threading.Lock()


    @classmethod
    def connect(
        cls,
        url: str | BackendURL | None = None,
        *,
        timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        follow_records: bool = True,
    ) -> Registry:
        """Connect (``None`` = ``$DISCOVERY_URL``, else ``memory://``) on a new background loop thread.

        See :meth:`AsyncRegistry.connect`: an unreachable backend raises :class:`BackendUnavailableError`
        naming the URL after ``timeout`` seconds at most, and leaves no thread behind; ``follow_records`` as there.
        """
        connecting = AsyncRegistry.connect(url, timeout=timeout, follow_records=follow_records)  # bad URLs fail here
        loop = LoopThread()
        try:
            core = loop.run(_connected(connecting))
        except BaseException:
            loop.stop()
            raise
        return cls(core, loop)

    @property
    def async_registry(self) -> AsyncRegistry:
        """The asyncio registry underneath (use it only from :attr:`loop`)."""
        return self._core

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop (in its own thread) the registry runs on: submit coroutines that use
        :attr:`async_registry` with ``asyncio.run_coroutine_threadsafe(coroutine, registry.loop)``.
        """
        return self._loop.loop


    @property
    def capabilities(self) -> Capabilities:
        """What the backend promises."""
        return self._core.capabilities

    def detection_bound(self, ttl: float | None = None) -> float:
        """Worst-case seconds for a dead registrant's instance to disappear."""
        return self._core.detection_bound(ttl)

    @property
    def connection(self) -> ConnectionStatus | None:
        """The backend connection's current state (readable from any thread)."""
        return self._core.connection

    def add_connection_listener(self, listener: ConnectionListener) -> Callable[[], None]:
        """Call ``listener(status)`` on every connection state change (connected / suspended / lost /
        reconnected), in the registry's loop thread; it must not block. Returns a function that removes it.
        """
        return self._core.add_connection_listener(listener)

    def health(self, timeout: float = 5.0) -> RegistryHealth:
        """The structured status of the connection, registrations and watches (see
        :meth:`AsyncRegistry.health`), read on the loop thread. A loop that does not answer within ``timeout``
        seconds is itself a problem: the report then says so and is not ready.
        """

        async def read() -> RegistryHealth:
            return self._core.health()

        if self._loop.stopped:
            return RegistryHealth(self._core.capabilities.name, True, self._core.connection, (), ())
        try:
            return self._loop.run(read(), timeout)
        except TimeoutError:
            stuck = ConnectionStatus(
                self._core.capabilities.name, ConnectionState.SUSPENDED, time.time(),
                f"the registry's event loop did not answer within {timeout:g} s",
            )
            return RegistryHealth(self._core.capabilities.name, self._core.closed, stuck, (), ())

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._core.closed

    def _check_open(self) -> None:
        if self._core.closed:
            raise ClosedError("this registry is closed")

    def register(self, instance: Instance, ttl: float | None = None) -> Registration:
        """Write ``instance`` and keep it alive; see :meth:`AsyncRegistry.register` (the same rules: a TTL below
        the backend's minimum is an error; an id this registry holds returns the same handle, rewritten).
        """
        self._check_open()
        if isinstance(instance, Instance) and self._core.writes_now(instance.namespace, instance.service):
            self._loop.refuse_loop_thread()
            inner = self._core.register_now(instance, ttl)
        else:
            inner = self._loop.run(self._core.register(instance, ttl))
        return self._handle(inner)

    def register_many(self, instances: Iterable[Instance], ttl: float | None = None) -> list[Registration]:
        """Register several instances at once; see :meth:`AsyncRegistry.register_many` (all or none, handles in the
        order given). One hand-off to the loop for the whole batch, whose writes share round trips: registering them
        one :meth:`register` after another waits for a round trip each.
        """
        self._check_open()
        inners = self._loop.run(self._core.register_many(list(instances), ttl))
        return [self._handle(inner) for inner in inners]

    def _handle(self, inner: AsyncRegistration) -> Registration:
        with self._handles_lock:
            handle = self._handles.get(id(inner))
            if handle is None:
                handle = self._handles[id(inner)] = Registration(inner, self._loop, self._core)
            return handle

    def set_status(
        self, service: str, instance_id: str, status: Status | str, namespace: str = DEFAULT_NAMESPACE
    ) -> Instance:
        """Set the status of an instance whichever process registered it; see :meth:`AsyncRegistry.set_status`."""
        return self._loop.run(self._core.set_status(service, instance_id, status, namespace))

    def instances(
        self,
        service: str,
        namespace: str = DEFAULT_NAMESPACE,
        selector: SelectorLike = None,
        statuses: StatusFilter = DEFAULT_STATUSES,
    ) -> tuple[Instance, ...]:
        """Instances matching a selector and statuses; answered in this thread when the service is watched.

        For a watched service the filtered result is remembered per snapshot, so repeating the same lookup
        costs a dictionary read until the service changes.
        """
        self._check_open()
        cached = self._core.cached_snapshot(service, namespace) if isinstance(service, str) else None
        lookup_key: tuple[object, ...] | None = None
        if cached is not None and (selector is None or isinstance(selector, str)) and isinstance(statuses, tuple):
            lookup_key = (service, namespace, selector, statuses)
            remembered = self._lookups.get(lookup_key)
            if remembered is not None and remembered[0] is cached:
                return remembered[1]
        validate_service_name(service)
        validate_namespace(namespace)
        parsed = parse_selector(selector)
        wanted = parse_statuses(statuses)
        if cached is None:
            if self._core.immediate:
                self._loop.refuse_loop_thread()
                return filter_instances(self._core.snapshot_now(service, namespace).instances, parsed, wanted)
            return self._loop.run(self._core.instances(service, namespace, parsed, statuses))
        found = filter_instances(cached.instances, parsed, wanted)
        if lookup_key is not None:
            if len(self._lookups) >= _MAX_REMEMBERED_LOOKUPS:
                self._lookups.clear()
            self._lookups[lookup_key] = (cached, found)
        return found

    def snapshot(self, service: str, namespace: str = DEFAULT_NAMESPACE) -> Snapshot:
        """The current full set of a service (cached when watched)."""
        self._check_open()
        validate_service_name(service)
        validate_namespace(namespace)
        cached = self._core.cached_snapshot(service, namespace)
        if cached is not None:
            return cached
        if self._core.immediate:
            self._loop.refuse_loop_thread()
            return self._core.snapshot_now(service, namespace)
        return self._loop.run(self._core.snapshot(service, namespace))

    def services(self, namespace: str = DEFAULT_NAMESPACE) -> tuple[str, ...]:
        """Names of services with instances in a namespace."""
        self._check_open()
        if self._core.immediate:
            self._loop.refuse_loop_thread()
            return self._core.services_now(namespace)
        return self._loop.run(self._core.services(namespace))

    def subscribe(
        self,
        service: str,
        callback: SnapshotCallback,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        on_end: EndCallback | None = None,
    ) -> Callable[[], None]:
        """Call ``callback(snapshot)`` now and after every change, in the loop thread (it must not block).

        Returns a function that unsubscribes. ``on_end()``, if given, is called once (in the loop thread) if
        the subscription ends without being unsubscribed (the registry closed).

        The subscription is handed to the loop thread without waiting for it (a bad name or a closed registry
        still raises here): subscribing to thousands of services costs no thread round trip each. It is made
        before any call this thread makes afterwards; unsubscribing waits, and always follows its subscription.
        """
        self._check_open()
        validate_service_name(service)
        validate_namespace(namespace)
        held: list[Callable[[], Any]] = []

        def subscribe() -> None:
            try:
                held.append(self._core.subscribe(service, callback, namespace, on_end=on_end))
            except ClosedError:  # closed meanwhile: the subscription ended before it began
                if on_end is not None:
                    on_end()

        self._loop.submit(subscribe)

        async def unsubscribe_async() -> None:
            if held:
                await held[0]()

        def unsubscribe() -> None:
            if self._core.closed:
                return  # closing the registry ended every subscription
            with contextlib.suppress(ClosedError):  # ... or it is closing right now, in another thread
                self._loop.run(unsubscribe_async())

        return unsubscribe

    def watch(self, service: str, namespace: str = DEFAULT_NAMESPACE) -> Watch:
        """A blocking iterator of snapshots: the current one first, then one per change."""
        self._check_open()
        return Watch(self, service, namespace)

    def close(self, *, deregister: bool = True) -> None:
        """Close the registry (see :meth:`AsyncRegistry.close`) and stop the loop thread.

        Every watch of this registry ends; every later call raises :class:`ClosedError`.
        """
        if self._loop.stopped:
            return
        try:
            self._loop.run(self._core.close(deregister=deregister))
        except ClosedError:
            pass  # another thread closed it meanwhile
        finally:
            self._loop.stop()


async def _connected(connecting: Any) -> AsyncRegistry:
    registry: AsyncRegistry = await connecting
    return registry
