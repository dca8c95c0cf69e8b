"""``AsyncRegistry``: the asyncio API (``Registry`` in :mod:`discovery.registry.blocking` is its blocking facade)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import traceback
from collections.abc import Callable, Collection, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any

from discovery.core.backend import Backend, Capabilities, ImmediateOperations, LostReason, RegistrationState
from discovery.core.connection import ConnectionListener, ConnectionStatus
from discovery.core.errors import BackendUnavailableError, ClosedError, DiscoveryError, ValidationError
from discovery.core.models import DEFAULT_NAMESPACE, Instance, Snapshot, Status
from discovery.core.plugins import create_backend
from discovery.core.selectors import Selector, parse_selector
from discovery.core.urls import BackendURL, parse_url
from discovery.core.validation import (
    validate_instance_id,
    validate_namespace,
    validate_service_name,
    validate_ttl,
    validate_ttl_minimum,
)
from discovery.observability.metrics import METRICS
from discovery.registry.follow import RecordFollower
from discovery.registry.health import RegistryHealth, registration_health, watch_health
from discovery.registry.registration import (
    UPDATABLE_FIELDS,
    AsyncRegistration,
    RegistrationRecord,
    RegistrationStates,
)
from discovery.registry.watch_hub import EndCallback, SnapshotCallback, WatchHub

log = logging.getLogger("discovery.registry")

SelectorLike = str | Mapping[str, str] | Selector | None
StatusFilter = Collection[Status | str] | None
DEFAULT_STATUSES: tuple[Status, ...] = (Status.UP,)
#: How long ``connect`` waits for the backend by default (seconds).
DEFAULT_CONNECT_TIMEOUT = 30.0
#: How long a write waits, at most, for the watch of its service to show it (read-your-writes), in seconds.
SETTLE_TIMEOUT = 5.0


def parse_statuses(statuses: StatusFilter) -> frozenset[Status] | None:
    """The set of statuses a filter names (``None`` = any status); ``ValidationError`` for an unknown one."""
    if statuses is None:
        return None
    try:
        return frozenset(Status(s) for s in statuses)
    except ValueError as bad:
        raise ValidationError("statuses", str(bad)) from None


def _release_frames(error: BaseException) -> None:
    """Drop the local variables held by the tracebacks of ``error`` and its causes (their text stays).

    A failed connect's error otherwise keeps the half-made client's calls alive through its frames, and with
    them gRPC's poller thread, until the garbage collector happens to run.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


def filter_instances(
    instances: tuple[Instance, ...], selector: Selector, statuses: frozenset[Status] | None
) -> tuple[Instance, ...]:
    """The instances matching a selector and a status set (``None`` = any status)."""
    return tuple(
        i for i in instances if (statuses is None or i.status in statuses) and selector.matches(i.labels)
    )


class AsyncRegistry:
    """Register, look up and watch instances through one backend. Use ``await AsyncRegistry.connect(url)``
    or ``async with AsyncRegistry.connect(url) as registry``.

    Not thread-safe: use it on the event loop it connected on; only :meth:`cached_snapshot` (and the
    ``handed_out`` pair the blocking facade uses) may be called from other threads. For threads use the blocking
    :class:`~discovery.Registry`.

    Session guarantees (docs/decisions/session-read-your-writes.md): once ``register``, ``update`` or
    ``deregister`` returns, every read of this registry reflects it — ``instances``, ``snapshot``, a watch's next
    snapshot, a subscription, a ``ServiceCache`` — watched or not (a watched service's write returns once its watch
    shows it, or the watch is stale); and no read is handed a snapshot older than one already handed out.
    """

    #: The longest a write waits for the watch of its service to show it (then it returns anyway, and says so).
    settle_timeout: float = SETTLE_TIMEOUT

    def __init__(self, backend: Backend, *, url: BackendURL | None = None, follow_records: bool = True) -> None:
        self._backend = backend
        self._immediate = backend.immediate
        self._url = url
        self._hub = WatchHub(backend)
        # Guards _registrations, _records and _closed against the *_now methods, which run in other threads.
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Bookkeeping the *_now methods leave to the loop (following a record), run there in one go.
        self._on_loop_queue: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self._on_loop_planned = False
        # Each live registration with the state record only this registry (and its backend) writes.
        self._registrations: dict[tuple[str, str, str], tuple[AsyncRegistration, RegistrationStates]] = {}
        self._records: dict[tuple[str, str, str], RegistrationRecord] = {}
        self._follower = RecordFollower(backend) if follow_records else None
        self._closed = False
        self._started = False

    @classmethod
    def connect(
        cls,
        url: str | BackendURL | None = None,
        *,
        timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        follow_records: bool = True,
    ) -> _Connecting:
        """Connect to the backend named by ``url`` (``None`` = ``$DISCOVERY_URL``, else ``memory://``).

        A backend that cannot be reached, or does not answer within ``timeout`` seconds (``None``: no limit),
        raises :class:`BackendUnavailableError` naming the URL (secrets redacted); whatever the attempt opened
        (connections, threads, tasks) is closed first.

        ``follow_records``: watch the records of this registry's registrations and adopt what someone else changes
        in them (an operator's ``discovery drain``; see :mod:`discovery.registry.follow`). It costs one backend
        watch stream per service this registry has registrations of (on Consul a parked blocking query); ``False``
        saves it, and then an operator's change is written back over at the owner's next ``update()`` or heal.
        """
        parsed = parse_url(url)
        return _Connecting(cls(create_backend(parsed), url=parsed, follow_records=follow_records), timeout)


    @property
    def backend(self) -> Backend:
        """The backend adapter."""
        return self._backend

    @property
    def capabilities(self) -> Capabilities:
        """What the backend promises."""
        return self._backend.capabilities

    def detection_bound(self, ttl: float | None = None) -> float:
        """Worst-case seconds for a dead registrant's instance to disappear, for a requested TTL."""
        return self._backend.detection_bound(ttl)

    async def start(self, timeout: float | None = None) -> None:
        """Connect the backend (done by ``connect``); see :meth:`connect` for ``timeout`` and the errors."""
        self._check_open()
        if self._started:
            return
        where = str(self._url) if self._url is not None else f"the {self._backend.scheme} backend"
        self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await self._backend.start()
        except BaseException as error:
            await self._abandon_start()
            _release_frames(error)
            if isinstance(error, TimeoutError) and timeout is not None:
                raise BackendUnavailableError(f"could not connect to {where} within {timeout:g} s") from None
            if isinstance(error, BackendUnavailableError):
                raise BackendUnavailableError(f"could not connect to {where}: {error}") from error
            if isinstance(error, DiscoveryError) or not isinstance(error, Exception):
                raise  # a typed refusal (credentials, TLS, configuration), or a cancellation / interrupt
            raise BackendUnavailableError(f"could not connect to {where}: {type(error).__name__}: {error}") from error
        self._started = True
        monitor = self._backend.connection
        monitor.add_listener(_report_connection_state)
        monitor.connected(f"{self._backend.capabilities.name} backend started")

    async def _abandon_start(self) -> None:
        """A start that failed or was cancelled: free what the backend may have opened, and close."""
        self._closed = True
        await self._hub.close()
        try:
            # Shielded: a start cancelled by a caller's own timeout must still release its connections.
            await asyncio.shield(self._backend.abort())
        except Exception as error:  # the original failure is what the caller needs to see
            log.debug("releasing a backend whose start failed: %r", error)
        self._backend.connection.reset()  # no "lost" later from a timer the failed start left pending


    @property
    def connection(self) -> ConnectionStatus | None:
        """The backend connection's current state (``None`` before :meth:`start`)."""
        return self._backend.connection.status

    def add_connection_listener(self, listener: ConnectionListener) -> Callable[[], None]:
        """Call ``listener(status)`` on every connection state change (connected / suspended / lost /
        reconnected), on this registry's event loop; it must not block. Returns a function that removes it.
        """
        return self._backend.connection.add_listener(listener)

    def health(self) -> RegistryHealth:
        """The structured status of the backend connection, every registration and every watch (no I/O);
        ``health().ready`` is a readiness verdict. Call it on the registry's loop.
        """
        return RegistryHealth(
            backend=self._backend.capabilities.name,
            closed=self._closed,
            connection=self._backend.connection.status,
            registrations=registration_health(self.registrations),
            watches=watch_health(self._hub.watches()),
        )

    async def __aenter__(self) -> AsyncRegistry:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def register(self, instance: Instance, ttl: float | None = None) -> AsyncRegistration:
        """Write ``instance`` and keep it alive until deregistered or closed.

        Raises :class:`ValidationError` for a bad instance or TTL (nothing is written); a ``ttl`` below the
        backend's minimum (``capabilities.min_ttl``) is an error, as it is in the URL.

        Registering an id this registry already holds (a live registration of the same service, namespace and
        id) returns that same handle with the instance rewritten, as :meth:`AsyncRegistration.update` would;
        changing its TTL that way is a :class:`ValidationError` (deregister first).
        """
        self._check_open()
        prepared = self._prepare(instance, ttl)
        if isinstance(prepared, AsyncRegistration):
            return await self._register_again(prepared, instance)
        registration, states, record = prepared
        instance = registration.instance
        record.writing += 1
        try:
            await self._backend.register(instance, registration.ttl, states.enter)
        finally:
            record.writing -= 1
        record.written(instance)
        with self._lock:
            replaced = self._commit(registration, states, record)
        self._registered(states, replaced, record)
        await self._settle(instance, lambda snapshot: snapshot.get(instance.id) == instance, registration)
        return registration

    async def register_many(self, instances: Iterable[Instance], ttl: float | None = None) -> list[AsyncRegistration]:
        """Register several instances at once, each as :meth:`register` does, concurrently: the backend's writes
        share round trips (ZooKeeper: one ``multi`` per round trip; etcd: one transaction per lease per round trip)
        where registering them one after another waits for a round trip each.

        Every instance and the TTL are checked before anything is written, and no two instances may have the same
        service, namespace and id (:class:`ValidationError`, nothing written). Returns the handles in the order
        given. All or none: if a registration fails, those this call made are deregistered again and the first
        error is raised (an id this registry already held is rewritten as :meth:`register` does, and stays).
        """
        self._check_open()
        batch = list(instances)
        keys: set[tuple[str, str, str]] = set()
        for instance in batch:
            self._checked(instance, ttl)
            if instance.key in keys:
                raise ValidationError("instances", f"{'/'.join(instance.key)} is given more than once")
            keys.add(instance.key)
        held_before = {key for key in keys if self._holds(key)}
        results = await asyncio.gather(*(self.register(instance, ttl) for instance in batch), return_exceptions=True)
        registrations = [result for result in results if isinstance(result, AsyncRegistration)]
        if len(registrations) == len(batch):
            return registrations
        made = [r for r in registrations if r.instance.key not in held_before]
        undone = await asyncio.gather(*(r.deregister() for r in made), return_exceptions=True)
        for registration, outcome in zip(made, undone, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("register_many: %s stays registered (deregistering it failed: %s); close() removes it",
                            "/".join(registration.instance.key), outcome)
        raise next(result for result in results if isinstance(result, BaseException))

    def _holds(self, key: tuple[str, str, str]) -> bool:
        held = self._registrations.get(key)
        return held is not None and held[0].active and held[0].lost_reason is not LostReason.TAKEN_OVER

    @property
    def immediate(self) -> bool:
        """Whether the ``*_now`` methods can work: the backend writes and reads without I/O."""
        return self._immediate is not None

    def writes_now(self, namespace: str, service: str) -> bool:
        """Whether a write of this service can be done by a ``*_now`` method: the backend needs no I/O, and no watch
        of this registry must show the write before the call returns (read-your-writes then needs the loop)."""
        return self._immediate is not None and not self._hub.watching(namespace, service)

    def register_now(self, instance: Instance, ttl: float | None = None) -> AsyncRegistration:
        """:meth:`register`, done before returning, from any thread; only where :meth:`writes_now` holds."""
        immediate = self._require_immediate()
        self._check_open()
        prepared = self._prepare(instance, ttl)
        if isinstance(prepared, AsyncRegistration):
            self._check_again(prepared, instance, ttl)
            log.info("%s is already registered by this registry: rewriting it in place", "/".join(instance.key))
            prepared.update_now(**{name: getattr(instance, name) for name in UPDATABLE_FIELDS})
            return prepared
        registration, states, record = prepared
        with self._lock:  # atomic with close(): written and recorded before it, or refused after it
            self._check_open()
            immediate.register_now(registration.instance, registration.ttl, states.enter)
            replaced = self._commit(registration, states, record)
        record.written(registration.instance)
        self._registered(states, replaced, record)
        return registration

    def _prepare(
        self, instance: Instance, ttl: float | None
    ) -> AsyncRegistration | tuple[AsyncRegistration, RegistrationStates, RegistrationRecord]:
        """A new registration, its states and its record; or the live handle this registry holds for the key."""
        instance, requested = self._checked(instance, ttl)
        effective = self._backend.effective_ttl(requested)
        # A handle whose id another registrant took over holds nothing any more: registering takes the id back.
        if self._holds(instance.key):
            return self._registrations[instance.key][0]
        states = RegistrationStates(self._loop)
        record = RegistrationRecord(instance)
        immediate = self._immediate is not None
        registration = AsyncRegistration(
            instance,
            effective,
            self._backend.detection_bound(requested),
            self._update,
            lambda deregistered: self._deregister(deregistered, states),
            states,
            record,
            update_now=self._update_now if immediate else None,
            deregister_now=(lambda deregistered: self._deregister_now(deregistered, states)) if immediate else None,
        )
        # The record, not the registration: the states object must not hold a way back to the handle that holds it,
        # or every ended registration is a reference cycle left to the garbage collector.
        states.observe(functools.partial(_report_registration_state, record))
        return registration, states, record

    def _checked(self, instance: Instance, ttl: float | None) -> tuple[Instance, float | None]:
        """The instance, validated (again only if forged or changed since construction), and the requested TTL,
        checked against the backend's minimum; :class:`ValidationError` otherwise."""
        if not isinstance(instance, Instance):
            raise ValidationError("instance", f"expected an Instance, got {type(instance).__name__}")
        instance = instance.checked()
        requested = validate_ttl(ttl)
        capabilities = self._backend.capabilities
        validate_ttl_minimum(
            requested,
            capabilities.min_ttl,
            capabilities.name,
            "" if capabilities.ttl_per_registration else " (its session timeout: set it in the URL)",
        )
        return instance, requested

    def _commit(
        self, registration: AsyncRegistration, states: RegistrationStates, record: RegistrationRecord
    ) -> RegistrationStates | None:
        """Record a written registration (under ``_lock``); returns the states of the one it replaced."""
        key = registration.instance.key
        previous = self._registrations.get(key)
        self._registrations[key] = (registration, states)
        self._records[key] = record
        return None if previous is None else previous[1]

    def _registered(
        self, states: RegistrationStates, replaced: RegistrationStates | None, record: RegistrationRecord
    ) -> None:
        """Announce a committed registration and follow its record (outside ``_lock``: listeners may call back)."""
        if self._follower is not None:
            self._on_loop(self._follower.track, record)
        if replaced is not None:
            replaced.enter(RegistrationState.DEREGISTERED)  # replaced: the key is the new one's now
        states.enter(RegistrationState.REGISTERED)

    def _on_loop(self, function: Callable[..., object], *args: Any) -> None:
        """Call ``function(*args)`` now when on the registry's loop, else soon on it (a ``*_now`` caller's thread).

        From other threads the calls are queued and run together: one wake-up of the loop for a burst of writes,
        not one each (every wake-up is the loop thread competing for the GIL with the writers).
        """
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop or self._loop is None:
            function(*args)
            return
        with self._lock:
            self._on_loop_queue.append((function, args))
            if self._on_loop_planned:
                return
            self._on_loop_planned = True
        with contextlib.suppress(RuntimeError):  # the loop closed: the registry is closed too
            self._loop.call_soon_threadsafe(self._run_on_loop_queue)

    def _run_on_loop_queue(self) -> None:
        with self._lock:
            queued, self._on_loop_queue = self._on_loop_queue, []
            self._on_loop_planned = False
        for function, args in queued:
            try:
                function(*args)
            except Exception:
                log.exception("deferred registry bookkeeping failed")

    def _require_immediate(self) -> ImmediateOperations:
        if self._immediate is None:
            raise RuntimeError(f"the {self._backend.scheme} backend needs I/O: use the coroutine instead")
        return self._immediate

    async def _register_again(self, held: AsyncRegistration, instance: Instance) -> AsyncRegistration:
        self._check_again(held, instance, None)
        log.info("%s is already registered by this registry: rewriting it in place", "/".join(instance.key))
        await held.update(**{name: getattr(instance, name) for name in UPDATABLE_FIELDS})
        return held

    def _check_again(self, held: AsyncRegistration, instance: Instance, ttl: float | None) -> None:
        requested = validate_ttl(ttl)
        if requested is not None and self._backend.effective_ttl(requested) != held.ttl:
            raise ValidationError(
                "ttl", f"{'/'.join(instance.key)} is already registered with a {held.ttl:g} s TTL; deregister it"
                " first to register it with another"
            )

    async def _update(self, registration: AsyncRegistration, instance: Instance) -> None:
        self._check_open()
        await self._backend.update(instance)
        await self._settle(instance, lambda snapshot: snapshot.get(instance.id) == instance, registration)

    def _update_now(self, registration: AsyncRegistration, instance: Instance) -> None:
        immediate = self._require_immediate()
        with self._lock:
            self._check_open()
            immediate.update_now(instance)

    def _deregister_now(self, registration: AsyncRegistration, states: RegistrationStates) -> None:
        immediate = self._require_immediate()
        key = registration.instance.key
        record = None
        with self._lock:
            current = self._registrations.get(key)
            if current is not None and current[0] is registration:
                del self._registrations[key]
                record = self._records.pop(key, None)
                if not self._closed:
                    immediate.deregister_now(registration.instance)
        if record is not None and self._follower is not None:
            follower = self._follower
            self._on_loop(lambda: asyncio.ensure_future(follower.untrack(record)))
        states.enter(RegistrationState.DEREGISTERED)

    async def _deregister(self, registration: AsyncRegistration, states: RegistrationStates) -> None:
        key = registration.instance.key
        removed = registration.instance
        with self._lock:
            current = self._registrations.get(key)
            owned = current is not None and current[0] is registration
            record = None
            if owned:
                del self._registrations[key]
                record = self._records.pop(key, None)
        if owned:
            if record is not None and self._follower is not None:
                await self._follower.untrack(record)
            if not self._closed:
                await self._backend.deregister(removed)
                # Gone, or another registrant's now: either way no longer what this registration wrote.
                await self._settle(removed, lambda snapshot: snapshot.get(removed.id) != removed, None)
        states.enter(RegistrationState.DEREGISTERED)

    async def _settle(
        self, written: Instance, shows: Callable[[Snapshot], bool], registration: AsyncRegistration | None
    ) -> None:
        """Read-your-writes for a watched service: wait (at most :attr:`settle_timeout`) until its watch shows the
        write just made, so the cache, every subscriber and every watch reflect it before the call returns.
        A registration taken over meanwhile ends the wait: its write is no longer the newest.
        """

        def settled(snapshot: Snapshot) -> bool:
            taken = registration is not None and registration.lost_reason is LostReason.TAKEN_OVER
            return taken or shows(snapshot)

        if not await self._hub.settle(written.namespace, written.service, settled, self.settle_timeout):
            log.warning(
                "the watch of %s/%s did not show this registry's write of %s within %g s; reads may lag behind it",
                written.namespace, written.service, written.id, self.settle_timeout,
            )

    async def set_status(
        self, service: str, instance_id: str, status: Status | str, namespace: str = DEFAULT_NAMESPACE
    ) -> Instance:
        """Set the status of an instance whichever process registered it: what ``discovery drain`` and
        ``discovery set-status`` do. Returns the instance as now stored.

        A registration of this registry is updated through its handle. Another process's goes through the backend's
        own mechanism (Consul: maintenance mode for DRAINING and the status check otherwise; etcd: the key rewritten
        on its owner's lease; ZooKeeper: the znode rewritten, its ephemeral owner kept); that owner adopts the change
        (see :mod:`discovery.registry.follow`). Raises :class:`ValidationError` for a bad name or status,
        :class:`NotRegisteredError` when no such instance is registered, :class:`UnsupportedOperationError` for a
        read-only (foreign) registration or a backend that cannot do it.
        """
        validate_service_name(service)
        validate_namespace(namespace)
        validate_instance_id(instance_id)
        try:
            wanted = Status(status)
        except ValueError:
            raise ValidationError("status", f"{status!r} is not one of {', '.join(s.value for s in Status)}") from None
        self._check_open()
        own = self._registrations.get((namespace, service, instance_id))
        if own is not None and own[0].active:
            return await own[0].update(status=wanted)
        return await self._backend.set_status(namespace, service, instance_id, wanted)

    @property
    def registrations(self) -> tuple[AsyncRegistration, ...]:
        """The live registrations made through this registry."""
        with self._lock:
            return tuple(registration for registration, _ in self._registrations.values())

    async def snapshot(self, service: str, namespace: str = DEFAULT_NAMESPACE) -> Snapshot:
        """The current full set of a service: from the watch cache when watched, else one backend read."""
        cached = self._checked_cache(service, namespace)
        if cached is not None:
            return cached
        instances = await self._backend.list(namespace, service)
        return Snapshot(service, namespace, instances, self._hub.next_revision())

    def snapshot_now(self, service: str, namespace: str = DEFAULT_NAMESPACE) -> Snapshot:
        """:meth:`snapshot`, from any thread; only when :attr:`immediate` (or the service is watched)."""
        cached = self._checked_cache(service, namespace)
        if cached is not None:
            return cached
        instances = self._require_immediate().list_now(namespace, service)
        return Snapshot(service, namespace, instances, self._hub.next_revision())

    def _checked_cache(self, service: str, namespace: str) -> Snapshot | None:
        """Validate the names and that the registry is open; the watch cache's snapshot if the service is watched."""
        validate_service_name(service)
        validate_namespace(namespace)
        self._check_open()
        return self._hub.cached(namespace, service)

    def cached_snapshot(self, service: str, namespace: str = DEFAULT_NAMESPACE) -> Snapshot | None:
        """The cached snapshot of a watched service, or ``None``; never does I/O (safe from any thread)."""
        return self._hub.cached(namespace, service)

    def handed_out_revision(self, service: str, namespace: str = DEFAULT_NAMESPACE) -> int:
        """The newest revision of a watched service this registry has handed to any reader (0 if unwatched);
        a watch iterator skips snapshots older than this (monotonic reads). Safe from any thread.
        """
        return self._hub.handed_out(namespace, service)

    def note_handed_out(self, snapshot: Snapshot) -> None:
        """Note that a snapshot of a watched service is being handed to a reader (by a watch iterator of the
        blocking facade). Safe from any thread.
        """
        self._hub.hand_out(snapshot.namespace, snapshot.service, snapshot)


    async def instances(
        self,
        service: str,
        namespace: str = DEFAULT_NAMESPACE,
        selector: SelectorLike = None,
        statuses: StatusFilter = DEFAULT_STATUSES,
    ) -> tuple[Instance, ...]:
        """Instances of a service matching a label selector and statuses (default: ``UP`` only;
        ``statuses=None`` for all). Answered from the cache when the service is watched.
        """
        parsed = parse_selector(selector)
        wanted = parse_statuses(statuses)
        snapshot = await self.snapshot(service, namespace)
        return filter_instances(snapshot.instances, parsed, wanted)

    async def services(self, namespace: str = DEFAULT_NAMESPACE) -> tuple[str, ...]:
        """Names of the services that have instances in a namespace."""
        validate_namespace(namespace)
        self._check_open()
        return await self._backend.services(namespace)

    def services_now(self, namespace: str = DEFAULT_NAMESPACE) -> tuple[str, ...]:
        """:meth:`services`, from any thread; only when :attr:`immediate`."""
        validate_namespace(namespace)
        self._check_open()
        return self._require_immediate().services_now(namespace)

    def subscribe(
        self,
        service: str,
        callback: SnapshotCallback,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        on_end: EndCallback | None = None,
    ) -> Callable[[], Any]:
        """Call ``callback(snapshot)`` with the current snapshot and after every change, on the event loop.

        Returns an async function that unsubscribes. The callback must not block. ``on_end()``, if given, is
        called once if the subscription ends without being unsubscribed (the registry closed).
        """
        validate_service_name(service)
        validate_namespace(namespace)
        self._check_open()
        self._hub.subscribe(namespace, service, callback, on_end)


        async def unsubscribe() -> None:
            await self._hub.unsubscribe(namespace, service, callback)

        return unsubscribe

    def watch(self, service: str, namespace: str = DEFAULT_NAMESPACE) -> AsyncWatch:
        """An async iterator of snapshots: the current one first, then one per change."""
        validate_service_name(service)
        validate_namespace(namespace)
        self._check_open()
        return AsyncWatch(self._hub, namespace, service)

    async def close(self, *, deregister: bool = True) -> None:
        """Stop watching and close the backend. With ``deregister=False`` registrations are left to
        expire as if this process had crashed (useful in tests and for handing over to a successor).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        await self._hub.close()  # first: every loop over a watch of this registry ends now
        if self._follower is not None:
            await self._follower.close()
        if self._started:
            if deregister:
                await self._backend.close()
            else:
                await self._backend.abort()
        with self._lock:
            ended = list(self._registrations.values())
            self._registrations.clear()
            self._records.clear()
        for _, states in ended:
            states.enter(RegistrationState.DEREGISTERED)
        last = self._backend.connection.status
        if self._started and last is not None and METRICS.active:
            METRICS.connection_closed(last)
        self._backend.connection.reset()  # no "lost" after close from a timer still pending

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this registry is closed")


def _report_registration_state(
    record: RegistrationRecord, state: RegistrationState, previous: RegistrationState | None
) -> None:
    """Log a state change and tell the metrics listener at once, in the thread that enters it (the loop, or the
    caller's thread for a ``*_now`` write): the metrics are current when the call returns."""
    level = logging.WARNING if state is RegistrationState.LOST else logging.INFO
    if log.isEnabledFor(level):
        log.log(level, "registration %s %s", "/".join(record.instance.key), state.value)
    if METRICS.active:
        METRICS.registration_state(record.instance, previous, state)


def _report_connection_state(status: ConnectionStatus) -> None:
    if METRICS.active:
        METRICS.connection_state(status)


class _Ended:
    """Queued after the last snapshot of a watch that ended."""


_ENDED = _Ended()


class AsyncWatch:
    """Async iterator (and async context manager) over a service's snapshots.

    Closing it (:meth:`aclose`) or its registry ends every ``async for`` over it (``StopAsyncIteration``);
    :meth:`next` and :meth:`until` raise :class:`ClosedError` on an ended watch. Not thread-safe: use it on the
    event loop of its registry.
    """

    def __init__(self, hub: WatchHub, namespace: str, service: str) -> None:
        self._hub = hub
        self._namespace = namespace
        self._service = service
        self._queue: asyncio.Queue[Snapshot | _Ended] = asyncio.Queue()
        self._subscribed = False
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the watch has ended (closed, or its registry closed)."""
        return self._closed

    def _subscribe(self) -> None:
        if self._subscribed or self._closed:
            return
        if self._hub.closed:
            self._end()
            return
        self._hub.subscribe(self._namespace, self._service, self._queue.put_nowait, self._end)
        self._subscribed = True

    def _end(self) -> None:
        """The subscription ended (the registry closed): wake whoever waits for a snapshot."""
        self._closed = True
        self._queue.put_nowait(_ENDED)

    def __aiter__(self) -> AsyncWatch:
        self._subscribe()
        return self

    async def __anext__(self) -> Snapshot:
        self._subscribe()
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        while True:
            item = await self._queue.get()
            if isinstance(item, _Ended):
                self._queue.put_nowait(item)  # every later call ends as well
                raise StopAsyncIteration
            # Monotonic reads: a snapshot older than one this registry already handed out (to a cache read, another
            # watch, a settled write) is skipped; a newer one is queued behind it. Bursts may be coalesced anyway.
            if item.revision >= self._hub.handed_out(self._namespace, self._service):
                self._hub.hand_out(self._namespace, self._service, item)
                return item

    async def next(self, timeout: float | None = None) -> Snapshot:
        """The next snapshot, waiting at most ``timeout`` seconds (``TimeoutError`` after);
        :class:`ClosedError` once the watch has ended.
        """
        async with asyncio.timeout(timeout):
            try:
                return await self.__anext__()
            except StopAsyncIteration:
                raise ClosedError(f"the watch of {self._namespace}/{self._service} is closed") from None

    async def until(self, predicate: Callable[[Snapshot], bool], timeout: float | None = None) -> Snapshot:
        """Consume snapshots until one satisfies ``predicate`` and return it (``TimeoutError`` after
        ``timeout`` seconds; :class:`ClosedError` if the watch ends first).
        """
        async with asyncio.timeout(timeout):
            async for snapshot in self:
                if predicate(snapshot):
                    return snapshot
        raise ClosedError(f"the watch of {self._namespace}/{self._service} ended before the condition held")

    async def aclose(self) -> None:
        """Stop watching; a loop iterating this watch ends."""
        if self._closed:
            return
        self._end()
        if self._subscribed and not self._hub.closed:
            await self._hub.unsubscribe(self._namespace, self._service, self._queue.put_nowait)

    async def __aenter__(self) -> AsyncWatch:
        self._subscribe()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Connecting:
    """What ``AsyncRegistry.connect`` returns: await it, or use it with ``async with``."""

    def __init__(self, registry: AsyncRegistry, timeout: float | None) -> None:
        self._registry = registry
        self._timeout = timeout

    def __await__(self) -> Generator[Any, None, AsyncRegistry]:
        return self._connect().__await__()

    async def _connect(self) -> AsyncRegistry:
        await self._registry.start(self._timeout)
        return self._registry

    async def __aenter__(self) -> AsyncRegistry:
        return await self._connect()

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._registry.close()


