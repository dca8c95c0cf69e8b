"""The backend conformance suite, shipped so that any backend author can run it.

Subclass :class:`ConformanceSuite` in a test module and provide a ``discovery_url`` fixture that returns a
URL isolated for each test (a fresh root / prefix / store), then run pytest::

    class TestMyBackend(ConformanceSuite):
        short_ttl = 2.0

        @pytest.fixture
        def discovery_url(self) -> str:
            return f"mine://127.0.0.1:1234/test-{uuid.uuid4().hex}"

Every timing assertion is made against the backend's own declared ``detection_bound``. Cases that need an
optional capability declare it with :func:`requires` (as SQLAlchemy's dialect suite gates its cases on what a
dialect declares): on a backend without it they are skipped, and the skip names what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import pytest
import pytest_asyncio

from discovery.core.backend import Backend, LostReason, RegistrationState
from discovery.core.definitions import MAX_DEFINITION_BYTES, DefinitionSnapshot, DefinitionStore
from discovery.core.errors import (
    BackendUnavailableError,
    ClosedError,
    ConfigurationError,
    DiscoveryError,
    NotRegisteredError,
    SelectorError,
    ValidationError,
)
from discovery.core.models import Instance, Snapshot, Status
from discovery.core.plugins import create_backend
from discovery.core.urls import BackendURL, Endpoint, parse_url
from discovery.core.validation import (
    MAX_ID_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    MAX_NAME_LENGTH,
    MAX_NAMED_PORTS,
)
from discovery.registry.async_registry import AsyncRegistry, AsyncWatch
from discovery.registry.blocking import Registry
from discovery.registry.registration import AsyncRegistration, RegistrationRecord, RegistrationStates
from discovery.testing.waiting import eventually

Case = TypeVar("Case", bound=Callable[..., Any])
T = TypeVar("T")

#: How long a healthy backend may take to show a change to a watcher or a lookup (not a performance bound).
CONVERGENCE_TIMEOUT = 15.0
#: Scheduling allowance on top of a declared detection bound (a loaded 2-core CI machine).
SCHEDULING_ALLOWANCE = 1.0
#: Closing a watch, a cache or a registry ends every loop over it within this many seconds.
CLOSE_BOUND = 1.0

#: What a registration is made of: none of it may be left in a reference cycle once it has ended. Only this
#: library's objects and errors are looked for: a client library's own cycles (an HTTP connection the server
#: closed, with the error it was closed with) are that library's.
_REGISTRATION_OBJECTS = (AsyncRegistration, RegistrationStates, RegistrationRecord, Instance, DiscoveryError)
#: What a watch is made of and carries.
_WATCH_OBJECTS = (AsyncWatch, Snapshot, Instance, DiscoveryError)
#: Rounds of a churn before it is measured (first calls fill caches that live on), and rounds measured.
_WARM_UP_ROUNDS = 3
_MEASURED_ROUNDS = 20


async def left_in_reference_cycles(
    churn: Callable[[int, int], Awaitable[None]], kinds: tuple[type, ...]
) -> list[str]:
    """Run ``churn(first, count)`` for a few rounds, then for more with the cyclic collector off, and name the
    objects of ``kinds`` that only that collector could free afterwards (type names, sorted, each once): a backend
    author's check that what a registration or a watch made is freed when it ends."""
    await churn(0, _WARM_UP_ROUNDS)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        await churn(_WARM_UP_ROUNDS, _MEASURED_ROUNDS)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return sorted({type(o).__qualname__ for o in gc.garbage if isinstance(o, kinds)})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()


#: The optional capabilities a case may require, and how a backend shows that it has each.
REQUIREMENTS: dict[str, Callable[[Backend], bool]] = {
    "cross_process": lambda backend: backend.capabilities.cross_process,
    "networked": lambda backend: backend.capabilities.networked,
    "definitions": lambda backend: backend.definitions is not None,
}
_REQUIRES = "discovery_conformance_requires"


def requires(*capabilities: str) -> Callable[[Case], Case]:
    """Declare the capabilities (keys of :data:`REQUIREMENTS`) a conformance case needs."""
    unknown = sorted(set(capabilities) - set(REQUIREMENTS))
    if unknown:
        raise ValueError(f"unknown conformance requirement(s) {unknown}; known: {sorted(REQUIREMENTS)}")

    def declare(case: Case) -> Case:
        setattr(case, _REQUIRES, capabilities)
        return case

    return declare


def missing_capabilities(backend: Backend, capabilities: tuple[str, ...]) -> list[str]:
    """The capabilities among ``capabilities`` that ``backend`` lacks."""
    return [name for name in capabilities if not REQUIREMENTS[name](backend)]


def definitions_of(registry: AsyncRegistry) -> DefinitionStore:
    """The definition store of a registry's backend (a case requiring ``definitions`` may rely on it)."""
    definitions = registry.backend.definitions
    assert definitions is not None, f"{registry.capabilities.name} declares no definitions"
    return definitions


async def next_set(watch: AsyncGenerator[DefinitionSnapshot, None]) -> DefinitionSnapshot:
    """The next snapshot of a definitions watch, within :data:`CONVERGENCE_TIMEOUT`."""
    return await asyncio.wait_for(anext(watch), CONVERGENCE_TIMEOUT)


async def _drain(watch: AsyncWatch) -> list[Snapshot]:
    return [snapshot async for snapshot in watch]


def _threads() -> frozenset[threading.Thread]:
    return frozenset(threading.enumerate())


def _to_thread_workers() -> frozenset[threading.Thread]:
    """The default executor's idle workers (``asyncio.to_thread`` of the test itself leaves them)."""
    return frozenset(t for t in threading.enumerate() if t.name.startswith("asyncio_"))


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def _shows(instance_id: str, instance: Instance) -> Callable[[Snapshot], bool]:
    """A snapshot predicate: the snapshot holds ``instance`` under ``instance_id``."""
    return lambda snapshot: snapshot.get(instance_id) == instance


def _value(read: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """An async probe for :func:`eventually` that reads a value without I/O."""

    async def probe() -> T:
        return read()

    return probe


async def _connect_fails_cleanly(dead: BackendURL, timeout: float) -> None:
    """Connecting to ``dead`` raises BackendUnavailableError naming it in time, and leaves no thread, task or
    file descriptor (socket) behind.
    """
    threads, tasks, descriptors = _threads(), asyncio.all_tasks(), _open_descriptors()
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as caught:
        await AsyncRegistry.connect(dead, timeout=timeout)
    elapsed = time.monotonic() - started
    where = str(dead.endpoints[0])
    assert where in str(caught.value), caught.value
    assert elapsed <= timeout + SCHEDULING_ALLOWANCE * 2, f"took {elapsed:.1f} s"
    del caught
    await eventually(_value(_threads), threads.issuperset, 5.0)
    assert asyncio.all_tasks() <= tasks
    await eventually(_value(_open_descriptors), lambda now: now <= descriptors, 5.0)


def _blocking_churn_case(url: str) -> list[str]:
    """Registrations made and deregistered through the blocking facade while one is kept: the ids of this call's
    registrations still alive afterwards, the registry still open."""
    service = f"sync-churn-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    with Registry.connect(url) as registry:
        kept = registry.register(make_instance(service, 0))
        for number in range(1, 31):
            registry.register(make_instance(service, number)).deregister()
        gc.collect()
        alive = sorted(o.instance.id for o in gc.get_objects()
                       if isinstance(o, AsyncRegistration) and o.instance.service == service)
        kept.deregister()
        return alive


def _blocking_close_case(url: str) -> None:
    """The blocking facade: a ``for`` loop in another thread ends when the registry closes; calls then fail."""
    registry = Registry.connect(url)
    registration = registry.register(make_instance("sync-close", 1))
    watch = registry.watch("sync-close")
    watch.until(lambda s: len(s) == 1, CONVERGENCE_TIMEOUT)
    other = registry.watch("sync-close")
    seen: list[Snapshot] = []
    consumer = threading.Thread(target=lambda: seen.extend(watch), daemon=True)
    closed_watch_consumer = threading.Thread(target=lambda: list(other), daemon=True)
    consumer.start()
    closed_watch_consumer.start()
    other.close()
    closed_watch_consumer.join(CLOSE_BOUND)
    assert not closed_watch_consumer.is_alive(), "closing a watch did not end the loop over it"
    started = time.monotonic()
    registry.close()
    consumer.join(CLOSE_BOUND)
    assert not consumer.is_alive(), "closing the registry did not end the loop over its watch"
    assert time.monotonic() - started <= CLOSE_BOUND + CONVERGENCE_TIMEOUT  # close() itself deregisters first
    calls: list[Callable[[], object]] = [
        lambda: registry.register(make_instance("sync-close", 2)),
        lambda: registry.instances("sync-close"),
        lambda: registry.snapshot("sync-close"),
        lambda: registry.services(),
        lambda: registry.watch("sync-close"),
        lambda: registry.subscribe("sync-close", lambda _s: None),
        lambda: watch.next(1),
        lambda: watch.until(lambda _s: True, 1),
    ]
    for number, call in enumerate(calls):
        try:
            call()
        except ClosedError:
            continue
        raise AssertionError(f"call {number} after close() did not raise ClosedError")
    assert registration.state is RegistrationState.DEREGISTERED
    try:
        registration.update(weight=2)
    except NotRegisteredError:
        pass  # close() deregistered it: its own calls say so
    else:
        raise AssertionError("updating a registration of a closed registry did not fail")
    registration.deregister()  # idempotent
    registry.close()  # idempotent


def make_instance(service: str, number: int, **fields: Any) -> Instance:
    """A plain instance ``<service>-<number>`` on 127.0.0.1."""
    return Instance(service, f"{service}-{number}", "127.0.0.1", 20000 + number, **fields)


def maximal_instance(service: str, status: Status = Status.UP) -> Instance:
    """An instance with every field at its largest allowed size, and a non-ASCII id."""
    unicode_id = ("ünïcødé-日本-" * 20)[: MAX_ID_LENGTH - 3] + "end"
    labels = {}
    for n in range(MAX_LABELS):
        prefix = f"k{n:02d}.example.org/"
        key = prefix + ("n" * (63 - len(prefix) - 1)) + "z"
        labels[key] = ("v" * (MAX_LABEL_VALUE_LENGTH - 3)) + f"{n:03d}"
    ports = {f"port-name-{n:05d}": 30000 + n for n in range(MAX_NAMED_PORTS)}
    hostname = ".".join(["h" * 61 + f"{n:02d}" for n in range(3)] + ["x" * 61])
    return Instance(
        service,
        unicode_id,
        hostname,
        65535,
        labels=labels,
        ports=ports,
        status=status,
        weight=1000,
        zone="zone-" + "z" * (MAX_LABEL_VALUE_LENGTH - 5),
    )


class ConformanceSuite:
    """The shared behaviour every backend must show. Subclasses provide the ``discovery_url`` fixture."""

    #: TTL used by the death tests (seconds); backends whose TTL is fixed by the URL ignore it.
    short_ttl: ClassVar[float] = 2.0
    #: How many concurrent registrations the bulk case makes.
    concurrent_registrations: ClassVar[int] = 100

    pytestmark = pytest.mark.asyncio

    @pytest.fixture
    def discovery_url(self) -> str:
        raise NotImplementedError("a ConformanceSuite subclass must provide the discovery_url fixture")

    @pytest.fixture(autouse=True)
    def capability_gate(self, request: pytest.FixtureRequest, discovery_url: str) -> None:
        """Skip a case declared with :func:`requires` on a backend that lacks what it needs (before any I/O)."""
        needed: tuple[str, ...] = getattr(request.function, _REQUIRES, ())
        if not needed:
            return
        backend = create_backend(discovery_url)  # unstarted: capabilities need no connection
        missing = missing_capabilities(backend, needed)
        if missing:
            pytest.skip(f"the {backend.capabilities.name} backend does not declare {', '.join(missing)}")

    @pytest_asyncio.fixture
    async def open_registry(self, discovery_url: str) -> AsyncIterator[Callable[[], Awaitable[AsyncRegistry]]]:
        opened: list[AsyncRegistry] = []

        async def open_one() -> AsyncRegistry:
            registry = await AsyncRegistry.connect(discovery_url)
            opened.append(registry)
            return registry

        yield open_one
        for registry in opened:
            await registry.close()

    @pytest_asyncio.fixture
    async def registry(self, open_registry: Callable[[], Awaitable[AsyncRegistry]]) -> AsyncRegistry:
        return await open_registry()

    # -- fields -------------------------------------------------------------------------------------------

    async def test_round_trip_of_every_field_and_status(
        self, registry: AsyncRegistry, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        reader = await open_registry()
        written = []
        for n, status in enumerate(Status):
            instance = maximal_instance(f"roundtrip-{n}", status)
            await registry.register(instance)
            written.append(instance)
        plain = Instance("roundtrip-plain", "p", "::1", 1, labels={"app": ""})
        await registry.register(plain)
        written.append(plain)
        for instance in written:
            found = await reader.instances(instance.service, statuses=None)
            assert found == (instance,), f"{instance.service} did not round-trip"
            if instance.status is Status.UP:
                assert await reader.instances(instance.service) == (instance,)
            else:
                assert await reader.instances(instance.service) == ()

    async def test_update_changes_fields_everywhere(
        self, registry: AsyncRegistry, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        reader = await open_registry()
        registration = await registry.register(make_instance("upd", 1, labels={"v": "1"}))
        async with reader.watch("upd") as watch:
            await watch.until(lambda s: len(s) == 1, CONVERGENCE_TIMEOUT)
            updated = await registration.update(status=Status.DRAINING, labels={"v": "2"}, weight=7, zone="z1")
            seen = await watch.until(lambda s: s.get("upd-1") == updated, CONVERGENCE_TIMEOUT)
        assert seen.get("upd-1") == updated
        assert await reader.instances("upd", statuses=None) == (updated,)
        assert await reader.instances("upd") == ()
        with pytest.raises(ValidationError):
            await registration.update(id="other")
        with pytest.raises(ValidationError):
            await registration.update(weight=0)
        assert await reader.instances("upd", statuses=None) == (updated,)

    # -- deregistration -----------------------------------------------------------------------------------

    async def test_deregister_removes_and_is_idempotent(self, registry: AsyncRegistry) -> None:
        registration = await registry.register(make_instance("dereg", 1))
        other = await registry.register(make_instance("dereg", 2))
        await registration.deregister()
        await registration.deregister()
        assert registration.state is RegistrationState.DEREGISTERED
        assert registration.history[0] is RegistrationState.REGISTERED
        assert [i.id for i in await registry.instances("dereg")] == ["dereg-2"]
        await other.deregister()
        assert await registry.instances("dereg", statuses=None) == ()

    async def test_a_deregistered_registration_is_freed_without_the_garbage_collector(
        self, registry: AsyncRegistry
    ) -> None:
        """A process that registers and deregisters ever new ids (a registration per job) frees each one's objects
        when it ends: none of them is left in a reference cycle for the cyclic collector to find later (whose full
        collections then take longer, and run while the process serves)."""
        async def churn(first: int, count: int) -> None:
            for number in range(first, first + count):
                await (await registry.register(make_instance("churn", number))).deregister()

        cyclic = await left_in_reference_cycles(churn, _REGISTRATION_OBJECTS)
        assert cyclic == [], f"left in reference cycles: {cyclic}"

    async def test_reregister_same_id_after_deregister(self, registry: AsyncRegistry) -> None:
        first = await registry.register(make_instance("rereg", 1, labels={"gen": "1"}))
        await first.deregister()
        second_instance = make_instance("rereg", 1, labels={"gen": "2"})
        second = await registry.register(second_instance)
        assert second.state is RegistrationState.REGISTERED
        assert await registry.instances("rereg") == (second_instance,)

    async def test_ttl_below_the_minimum_is_refused(self, registry: AsyncRegistry) -> None:
        minimum = registry.capabilities.min_ttl
        with pytest.raises(ValidationError, match=r"below the .* minimum"):
            await registry.register(make_instance("short", 1), ttl=minimum / 2)
        assert await registry.instances("short", statuses=None) == ()
        registration = await registry.register(make_instance("short", 1), ttl=minimum)
        assert registration.ttl == registry.backend.effective_ttl(minimum)

    async def test_register_same_id_twice_rewrites_the_held_registration(self, registry: AsyncRegistry) -> None:
        first = await registry.register(make_instance("twice", 1, labels={"gen": "1"}))
        newer = make_instance("twice", 1, labels={"gen": "2"})
        again = await registry.register(newer)
        assert again is first and first.active and first.instance == newer
        assert await registry.instances("twice") == (newer,)
        assert registry.registrations == (first,)

    async def test_register_many_registers_all_or_none(self, registry: AsyncRegistry) -> None:
        batch = [make_instance("many", n) for n in range(1, 6)]
        registrations = await registry.register_many(batch)
        assert [r.instance for r in registrations] == batch
        assert all(r.state is RegistrationState.REGISTERED for r in registrations)
        assert await registry.instances("many") == tuple(batch)
        with pytest.raises(ValidationError, match="more than once"):
            await registry.register_many([make_instance("many", 6), make_instance("many", 6)])
        with pytest.raises(ValidationError):
            await registry.register_many([make_instance("many", 7), "not an instance"])  # type: ignore[list-item]
        assert await registry.instances("many", statuses=None) == tuple(batch)  # nothing written
        for registration in registrations:
            await registration.deregister()
        assert await registry.instances("many", statuses=None) == ()

    # -- liveness -----------------------------------------------------------------------------------------

    async def test_abrupt_close_disappears_within_bound(
        self, registry: AsyncRegistry, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        doomed = await open_registry()
        survivor = await registry.register(make_instance("death", 1))
        await doomed.register(make_instance("death", 2), ttl=self.short_ttl)
        bound = doomed.detection_bound(self.short_ttl)
        async with registry.watch("death") as watch:
            await watch.until(lambda s: s.ids() == {"death-1", "death-2"}, CONVERGENCE_TIMEOUT)
            started = time.monotonic()
            await doomed.close(deregister=False)
            await watch.until(lambda s: s.ids() == {"death-1"}, bound + SCHEDULING_ALLOWANCE)
            elapsed = time.monotonic() - started
        assert elapsed <= bound + SCHEDULING_ALLOWANCE
        assert [i.id for i in await registry.instances("death")] == ["death-1"]
        assert survivor.state is RegistrationState.REGISTERED

    @requires("cross_process")
    async def test_killed_registrant_process_disappears_within_bound(
        self, registry: AsyncRegistry, discovery_url: str
    ) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "discovery.testing.registrant", discovery_url, "default", "killed", "3",
             str(self.short_ttl)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)  # type: ignore[union-attr]
            assert line.startswith("READY"), f"registrant failed: {line!r} {process.stderr.read()}"  # type: ignore[union-attr]
            ids = set(line.split()[1:])
            async with registry.watch("killed") as watch:
                await watch.until(lambda s: s.ids() == ids, CONVERGENCE_TIMEOUT)
                started = time.monotonic()
                os.kill(process.pid, signal.SIGKILL)
                bound = registry.detection_bound(self.short_ttl)
                await watch.until(lambda s: not s.ids(), bound + SCHEDULING_ALLOWANCE)
                elapsed = time.monotonic() - started
            assert elapsed <= bound + SCHEDULING_ALLOWANCE
            assert await registry.instances("killed", statuses=None) == ()
        finally:
            process.kill()
            process.wait()

    # -- watches ------------------------------------------------------------------------------------------

    async def test_watch_starts_with_current_then_follows_changes_in_order(self, registry: AsyncRegistry) -> None:
        await registry.register(make_instance("order", 0))
        expected_sequence = [{"order-0"}, {"order-0", "order-1"}, {"order-0", "order-1", "order-2"},
                             {"order-0", "order-2"}]
        seen: list[Snapshot] = []
        async with registry.watch("order") as watch:
            first = await watch.next(CONVERGENCE_TIMEOUT)
            seen.append(first)
            assert first.ids() == {"order-0"}
            one = await registry.register(make_instance("order", 1))
            await registry.register(make_instance("order", 2))
            await one.deregister()
            while seen[-1].ids() != expected_sequence[-1]:
                seen.append(await watch.next(CONVERGENCE_TIMEOUT))
        revisions = [s.revision for s in seen]
        assert revisions == sorted(set(revisions)), f"revisions not strictly increasing: {revisions}"
        positions = [expected_sequence.index(set(s.ids())) for s in seen]
        assert positions == sorted(positions), f"snapshots out of order: {[sorted(s.ids()) for s in seen]}"
        assert not seen[-1].stale

    async def test_two_watchers_agree(
        self, registry: AsyncRegistry, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        other = await open_registry()
        async with registry.watch("agree") as first, other.watch("agree") as second:
            registrations = [await registry.register(make_instance("agree", n)) for n in range(5)]
            await registrations[2].deregister()
            await registrations[3].update(status=Status.DOWN)
            truth = Snapshot("agree", "default", await other.backend.list("default", "agree"))
            one = await first.until(lambda s: s.same_members(truth), CONVERGENCE_TIMEOUT)
            two = await second.until(lambda s: s.same_members(truth), CONVERGENCE_TIMEOUT)
        assert one.same_members(two)
        assert one.ids() == {"agree-0", "agree-1", "agree-3", "agree-4"}

    async def test_watched_service_is_answered_from_cache(self, registry: AsyncRegistry) -> None:
        await registry.register(make_instance("cached", 1))
        async with registry.watch("cached") as watch:
            current = await watch.until(lambda s: len(s) == 1, CONVERGENCE_TIMEOUT)
            assert registry.cached_snapshot("cached") is current
            assert await registry.snapshot("cached") is current
        assert registry.cached_snapshot("cached") is None

    async def test_subscribe_delivers_current_and_changes(self, registry: AsyncRegistry) -> None:
        received: list[Snapshot] = []
        changed = asyncio.Event()

        def on_snapshot(snapshot: Snapshot) -> None:
            received.append(snapshot)
            changed.set()

        unsubscribe = registry.subscribe("subs", on_snapshot)
        try:
            await asyncio.wait_for(changed.wait(), CONVERGENCE_TIMEOUT)
            assert received[0].ids() == set()
            await registry.register(make_instance("subs", 1))
            deadline = time.monotonic() + CONVERGENCE_TIMEOUT
            while received[-1].ids() != {"subs-1"}:
                changed.clear()
                await asyncio.wait_for(changed.wait(), max(0.01, deadline - time.monotonic()))
        finally:
            await unsubscribe()

    # -- listing and isolation ----------------------------------------------------------------------------

    async def test_services_lists_names_per_namespace(self, registry: AsyncRegistry) -> None:
        assert await registry.services() == ()
        await registry.register(make_instance("alpha", 1))
        beta = await registry.register(make_instance("beta", 1))
        await registry.register(make_instance("gamma", 1, namespace="other"))
        assert await registry.services() == ("alpha", "beta")
        assert await registry.services("other") == ("gamma",)
        await beta.deregister()
        assert await registry.services() == ("alpha",)

    async def test_namespaces_are_isolated(self, registry: AsyncRegistry) -> None:
        in_a = await registry.register(Instance("shared", "same-id", "127.0.0.1", 1000, namespace="team-a"))
        in_b_instance = Instance("shared", "same-id", "127.0.0.2", 2000, namespace="team-b")
        await registry.register(in_b_instance)
        assert await registry.instances("shared") == ()
        assert await registry.instances("shared", namespace="team-a") == (in_a.instance,)
        async with registry.watch("shared", namespace="team-b") as watch:
            await in_a.deregister()
            await registry.register(Instance("shared", "x", "127.0.0.3", 3000, namespace="team-a"))
            await eventually(
                lambda: registry.instances("shared", namespace="team-a"),
                lambda found: [i.id for i in found] == ["x"],
                CONVERGENCE_TIMEOUT,
            )
            snapshot = await watch.next(CONVERGENCE_TIMEOUT)
            assert snapshot.instances == (in_b_instance,)
        assert await registry.instances("shared", namespace="team-b") == (in_b_instance,)

    async def test_service_name_prefixes_never_leak(self, registry: AsyncRegistry) -> None:
        api = make_instance("api", 1)
        await registry.register(api)
        async with registry.watch("api") as watch:
            await watch.until(lambda s: len(s) == 1, CONVERGENCE_TIMEOUT)
            for name in ("api-v2", "api2", "ap", "api-v2-x"):
                await registry.register(make_instance(name, 1))
            marker = await registry.register(make_instance("api", 2))
            seen = await watch.until(lambda s: "api-2" in s.ids(), CONVERGENCE_TIMEOUT)
            await marker.deregister()
        assert {i.service for i in seen} == {"api"}
        assert await registry.instances("api") == (api,)
        assert await registry.instances("ap") == (make_instance("ap", 1),)

    async def test_selectors_and_status_filters(self, registry: AsyncRegistry) -> None:
        rows = {
            1: {"app": "web", "tier": "front", "env": "prod"},
            2: {"app": "web", "tier": "db", "env": "stage"},
            3: {"app": "api", "env": "prod", "legacy": "true"},
            4: {"app": "web", "app.kubernetes.io/name": "shop"},
        }
        for n, labels in rows.items():
            await registry.register(make_instance("sel", n, labels=labels))
        await registry.register(make_instance("sel", 5, labels={"app": "web"}, status=Status.DRAINING))

        async def ids(selector: str, **kwargs: Any) -> set[int]:
            return {int(i.id.split("-")[1]) for i in await registry.instances("sel", selector=selector, **kwargs)}

        assert await ids("") == {1, 2, 3, 4}
        assert await ids("app=web") == {1, 2, 4}
        assert await ids("app==web,tier!=db") == {1, 4}
        assert await ids("env in (prod, stage)") == {1, 2, 3}
        assert await ids("env notin (prod)") == {2, 4}
        assert await ids("legacy") == {3}
        assert await ids("!legacy,app") == {1, 2, 4}
        assert await ids("app.kubernetes.io/name=shop") == {4}
        assert await ids("app=web", statuses=None) == {1, 2, 4, 5}
        assert await ids("app=web", statuses=[Status.DRAINING]) == {5}
        assert await ids("app=web", statuses=["UP", "DRAINING"]) == {1, 2, 4, 5}
        with pytest.raises(SelectorError):
            await registry.instances("sel", selector="app in web")

    async def test_concurrent_registrations_are_all_visible(
        self, registry: AsyncRegistry, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        count = self.concurrent_registrations
        reader = await open_registry()
        async with reader.watch("bulk") as watch:
            await asyncio.gather(*(registry.register(make_instance("bulk", n)) for n in range(count)))
            final = await watch.until(lambda s: len(s) == count, CONVERGENCE_TIMEOUT * 2)
        assert final.ids() == {f"bulk-{n}" for n in range(count)}
        assert len(await reader.instances("bulk")) == count

    # -- bad input ----------------------------------------------------------------------------------------

    async def test_every_bad_input_is_rejected_and_nothing_is_written(
        self, registry: AsyncRegistry, discovery_url: str
    ) -> None:
        good: dict[str, Any] = {"service": "ok", "id": "ok-1", "address": "127.0.0.1", "port": 80}
        bad_fields: list[dict[str, Any]] = [
            {"service": "Bad"}, {"service": "a/b"}, {"service": ""}, {"service": "x" * (MAX_NAME_LENGTH + 1)},
            {"service": "-a"}, {"service": "a.b"}, {"service": ".."}, {"namespace": "../etc"},
            {"namespace": "Default"}, {"id": "a/b"}, {"id": ".."}, {"id": "."}, {"id": "a\x00b"}, {"id": ""},
            {"id": "x" * (MAX_ID_LENGTH + 1)}, {"id": "with space"}, {"id": "-lead"}, {"address": ""},
            {"address": "bad host"}, {"address": "a..b"}, {"port": 0}, {"port": 65536}, {"port": "80"},
            {"port": True}, {"labels": {"bad key": "v"}}, {"labels": {"k": "bad value"}}, {"labels": {"k": 1}},
            {"labels": {f"k{n}": "v" for n in range(MAX_LABELS + 1)}}, {"labels": {"a/b/c": "v"}},
            {"ports": {"HTTP": 80}}, {"ports": {"http": 0}}, {"ports": {"1234": 80}},
            {"ports": {f"p{n}": 80 + n for n in range(MAX_NAMED_PORTS + 1)}}, {"status": "RUNNING"},
            {"weight": 0}, {"weight": 1001}, {"weight": 1.5}, {"zone": ""}, {"zone": "has space"},
        ]
        for overrides in bad_fields:
            with pytest.raises(ValidationError):
                Instance(**{**good, **overrides})
        forged = object.__new__(Instance)
        for name, value in {**good, "namespace": "default", "labels": {}, "ports": {}, "status": Status.UP,
                            "weight": 1, "zone": None, "id": "../../escape"}.items():
            object.__setattr__(forged, name, value)
        with pytest.raises(ValidationError):
            await registry.register(forged)
        with pytest.raises(ValidationError):
            await registry.register(Instance(**good), ttl=-1)
        with pytest.raises(ValidationError):
            await registry.register("not an instance")  # type: ignore[arg-type]
        for call in (
            lambda: registry.instances("Bad"),
            lambda: registry.instances("ok", namespace="../x"),
            lambda: registry.services("a/b"),
            lambda: registry.snapshot(""),
        ):
            with pytest.raises(ValidationError):
                await call()
        with pytest.raises(ValidationError):
            registry.watch("a/../b")
        with pytest.raises(SelectorError):
            await registry.instances("ok", selector="a=b=c")
        with pytest.raises(ValidationError):
            await registry.instances("ok", statuses=["RUNNING"])
        url = parse_url(discovery_url)
        bad_url = f"{discovery_url}{'&' if url.params else '?'}no_such_parameter=1"
        with pytest.raises(ConfigurationError):
            create_backend(bad_url)
        assert isinstance(ConfigurationError("x"), DiscoveryError)
        for namespace in ("default", "etc", "x"):
            assert await registry.services(namespace) == ()

    async def test_failed_update_leaves_the_stored_instance_unchanged(self, registry: AsyncRegistry) -> None:
        original = make_instance("keep", 1, labels={"a": "1"})
        registration = await registry.register(original)
        for bad in ({"labels": {"bad key": "1"}}, {"port": 0}, {"status": "NOPE"}, {"service": "other"}):
            with pytest.raises(ValidationError):
                await registration.update(**bad)
        assert registration.instance == original
        assert await registry.instances("keep") == (original,)

    # -- an operator's status change (discovery drain / set-status) --------------------------------------------

    async def test_an_operator_sets_the_status_and_the_owner_adopts_it(
        self, registry: AsyncRegistry, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        operator = await open_registry()
        registration = await registry.register(make_instance("oper", 1, labels={"v": "1"}))
        adopted: list[Instance] = []
        registration.on_instance_change(lambda _registration, instance: adopted.append(instance))
        async with operator.watch("oper") as watch:
            await watch.until(lambda s: s.get("oper-1") == registration.instance, CONVERGENCE_TIMEOUT)

            drained = await operator.set_status("oper", "oper-1", Status.DRAINING)
            assert drained == registration.instance.with_changes(status=Status.DRAINING)
            await watch.until(lambda s: s.get("oper-1") == drained, CONVERGENCE_TIMEOUT)
            await eventually(_value(lambda: registration.instance), lambda i: i == drained, CONVERGENCE_TIMEOUT)
            assert adopted == [drained], "the owner is told once"
            assert await operator.instances("oper") == (), "a DRAINING instance leaves the picks"

            # The owner's own update starts from what it adopted: the drain is not written back over.
            relabelled = await registration.update(labels={"v": "2"})
            assert relabelled == drained.with_changes(labels={"v": "2"})
            await watch.until(lambda s: s.get("oper-1") == relabelled, CONVERGENCE_TIMEOUT)

            for status in (Status.DOWN, Status.UP):
                changed = await operator.set_status("oper", "oper-1", status.value)
                assert changed == relabelled.with_changes(status=status)
                await watch.until(_shows("oper-1", changed), CONVERGENCE_TIMEOUT)
                await eventually(_value(lambda: registration.instance), changed.__eq__, CONVERGENCE_TIMEOUT)
        assert [i.status for i in adopted] == [Status.DRAINING, Status.DOWN, Status.UP]
        assert registration.state is RegistrationState.REGISTERED

    async def test_setting_the_status_of_a_missing_instance_or_a_bad_status_fails(
        self, registry: AsyncRegistry, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        operator = await open_registry()
        await registry.register(make_instance("oper-bad", 1))
        with pytest.raises(NotRegisteredError):
            await operator.set_status("oper-bad", "oper-bad-9", Status.DRAINING)
        with pytest.raises(NotRegisteredError):
            await operator.set_status("oper-none", "x", Status.DRAINING)
        for service, instance_id, status in (("oper-bad", "oper-bad-1", "SLEEPY"), ("Bad_Name", "x", "UP"),
                                             ("oper-bad", "bad id", "UP")):
            with pytest.raises(ValidationError):
                await operator.set_status(service, instance_id, status)
        assert [i.status for i in await registry.instances("oper-bad", statuses=None)] == [Status.UP]

    async def test_every_status_change_of_the_owner_is_seen_by_others(
        self, registry: AsyncRegistry, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        # Every pair of statuses in turn, including a switch between two that take no traffic (STARTING -> DOWN),
        # which on Consul changes only a check's output (synced to the catalog minutes later).
        reader = await open_registry()
        registration = await registry.register(make_instance("switch", 1, status=Status.STARTING))
        async with reader.watch("switch") as watch:
            for status in (Status.DOWN, Status.UP, Status.STARTING, Status.DRAINING, Status.DOWN, Status.STARTING):
                changed = await registration.update(status=status)
                await watch.until(_shows("switch-1", changed), CONVERGENCE_TIMEOUT)
                assert await reader.instances("switch", statuses=None) == (changed,)

    async def test_the_owner_setting_its_own_status_updates_its_registration(self, registry: AsyncRegistry) -> None:
        registration = await registry.register(make_instance("oper-own", 1))
        drained = await registry.set_status("oper-own", "oper-own-1", Status.DRAINING)
        assert registration.instance == drained
        assert await registry.instances("oper-own", statuses=None) == (drained,)

    async def test_declared_bound_is_concrete(self, registry: AsyncRegistry) -> None:
        caps = registry.capabilities
        bound = registry.detection_bound(self.short_ttl)
        assert caps.min_ttl > 0 and caps.default_ttl >= caps.min_ttl
        assert registry.backend.effective_ttl(self.short_ttl) <= bound < 600
        registration = await registry.register(make_instance("bound", 1), ttl=self.short_ttl)
        assert registration.detection_bound == bound

    # -- durable definitions ----------------------------------------------------------------------------

    @requires("definitions")
    async def test_definitions_round_trip_replace_and_delete(
        self, registry: AsyncRegistry, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        store, reader = definitions_of(registry), definitions_of(await open_registry())
        assert await reader.get("things", "default", "a") is None
        for data in (bytes(range(256)) * 4, b"", b"x" * MAX_DEFINITION_BYTES, b"second"):
            await store.put("things", "default", "a", data)
            assert await reader.get("things", "default", "a") == data, f"{len(data)} bytes did not round-trip"
        assert await reader.delete("things", "default", "a") is True
        assert await store.delete("things", "default", "a") is False
        assert await store.get("things", "default", "a") is None
        assert await store.list("things") == ()

    @requires("definitions")
    async def test_definitions_list_sorted_per_kind_and_namespace(self, registry: AsyncRegistry) -> None:
        store = definitions_of(registry)
        for kind, namespace, name in (("things", "team-b", "x"), ("things", "default", "b"),
                                      ("things", "default", "a"), ("others", "default", "a")):
            await store.put(kind, namespace, name, f"{kind}/{namespace}/{name}".encode())
        assert [(d.namespace, d.name, d.data) for d in await store.list("things")] == [
            ("default", "a", b"things/default/a"), ("default", "b", b"things/default/b"),
            ("team-b", "x", b"things/team-b/x"),
        ]
        assert [d.name for d in await store.list("things", "default")] == ["a", "b"]
        assert [(d.kind, d.name) for d in await store.list("others")] == [("others", "a")]
        assert await store.list("things", "team-c") == ()
        assert await store.list("nothing") == ()

    @requires("definitions")
    async def test_definitions_never_collide_with_instances(self, registry: AsyncRegistry) -> None:
        store = definitions_of(registry)
        await store.put("services", "default", "web", b"{}")
        registration = await registry.register(make_instance("web", 1))
        assert await registry.services() == ("web",)
        assert [i.id for i in await registry.instances("web", statuses=None)] == ["web-1"]
        assert await store.delete("services", "default", "web") is True
        assert [i.id for i in await registry.instances("web", statuses=None)] == ["web-1"]
        await store.put("services", "default", "web", b"{}")
        await registration.deregister()
        assert await registry.services() == ()
        assert [d.name for d in await store.list("services")] == ["web"]

    @requires("definitions")
    async def test_definitions_outlive_the_registry_that_wrote_them(
        self, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        writer = await open_registry()
        await definitions_of(writer).put("things", "default", "kept", b"durable")
        await writer.register(make_instance("kept", 1))
        await writer.close()
        reader = await open_registry()
        assert await definitions_of(reader).get("things", "default", "kept") == b"durable"
        assert await reader.instances("kept", statuses=None) == ()

    @requires("definitions")
    async def test_definitions_watch_yields_the_whole_set_after_each_change(
        self, registry: AsyncRegistry, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        store, writer = definitions_of(registry), definitions_of(await open_registry())
        await writer.put("things", "default", "a", b"1")
        watch = store.watch("things", "default")
        try:
            first = await next_set(watch)
            assert [(d.name, d.data) for d in first.items] == [("a", b"1")] and not first.stale
            await writer.put("things", "team-b", "elsewhere", b"x")  # another namespace: no new set
            await writer.put("things", "default", "b", b"2")
            second = await next_set(watch)
            assert [(d.name, d.data) for d in second.items] == [("a", b"1"), ("b", b"2")]
            await writer.put("things", "default", "a", b"3")
            third = await next_set(watch)
            assert [(d.name, d.data) for d in third.items] == [("a", b"3"), ("b", b"2")]
            await writer.delete("things", "default", "a")
            fourth = await next_set(watch)
            assert [d.name for d in fourth.items] == ["b"]
            assert (fourth.kind, fourth.namespace, fourth.stale) == ("things", "default", False)
        finally:
            await watch.aclose()

    @requires("definitions")
    async def test_bad_definition_input_is_rejected_and_nothing_is_written(self, registry: AsyncRegistry) -> None:
        store = definitions_of(registry)
        bad_keys = [
            ("Things", "default", "a"), ("a/b", "default", "a"), ("", "default", "a"), ("_definitions", "default", "a"),
            ("x" * 64, "default", "a"), ("things", "../x", "a"), ("things", "Default", "a"), ("things", "", "a"),
            ("things", "default", "a/b"), ("things", "default", ".."), ("things", "default", ""),
            ("things", "default", "x" * 64), ("things", "default", "A"), ("things", "default", "a\x00"),
        ]
        for kind, namespace, name in bad_keys:
            with pytest.raises(ValidationError):
                await store.put(kind, namespace, name, b"x")
            with pytest.raises(ValidationError):
                await store.get(kind, namespace, name)
            with pytest.raises(ValidationError):
                await store.delete(kind, namespace, name)
        for data in ("text", None, 12, b"x" * (MAX_DEFINITION_BYTES + 1)):
            with pytest.raises(ValidationError):
                await store.put("things", "default", "a", data)  # type: ignore[arg-type]
        bad_scopes: list[tuple[str, str | None]] = [("Things", None), ("things", "../x")]
        for bad_kind, bad_namespace in bad_scopes:
            with pytest.raises(ValidationError):
                await store.list(bad_kind, bad_namespace)
            with pytest.raises(ValidationError):
                store.watch(bad_kind, bad_namespace)
        assert await store.list("things") == ()

    @requires("definitions")
    async def test_definitions_of_a_closed_backend_raise_closed_error(
        self, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        registry = await open_registry()
        store = definitions_of(registry)
        await registry.close()
        with pytest.raises(ClosedError):
            await store.put("things", "default", "a", b"x")
        with pytest.raises(ClosedError):
            await store.get("things", "default", "a")
        with pytest.raises(ClosedError):
            await store.list("things")

    # -- lifecycle: closing ends everything, a failed connect leaves nothing ---------------------------------------

    async def test_an_ended_watch_is_freed_without_the_garbage_collector(
        self, registry: AsyncRegistry, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        """A process that watches a service for a while, again and again (a request that looks up another service
        with its own watch), frees each watch's stream and snapshots when the watch is closed."""
        for number in range(3):
            await registry.register(make_instance("watched-churn", number))
        reader = await open_registry()

        async def churn(first: int, count: int) -> None:
            for _ in range(count):
                async with reader.watch("watched-churn") as watch:
                    await watch.until(lambda snapshot: len(snapshot) == 3, CONVERGENCE_TIMEOUT)

        cyclic = await left_in_reference_cycles(churn, _WATCH_OBJECTS)
        assert cyclic == [], f"left in reference cycles: {cyclic}"

    async def test_closing_a_watch_ends_the_loops_over_it(self, registry: AsyncRegistry) -> None:
        watch = registry.watch("closing")
        await watch.next(CONVERGENCE_TIMEOUT)
        received: list[Snapshot] = []

        async def consume() -> None:
            async for snapshot in watch:
                received.append(snapshot)

        consumer = asyncio.create_task(consume())
        waiter = asyncio.create_task(watch.until(lambda _s: False))
        await asyncio.sleep(0)  # both are waiting for the next snapshot now
        started = time.monotonic()
        await watch.aclose()
        await asyncio.wait_for(consumer, CLOSE_BOUND)  # ends with StopAsyncIteration, i.e. the loop just ends
        with pytest.raises(ClosedError):
            await asyncio.wait_for(waiter, CLOSE_BOUND)
        assert time.monotonic() - started <= CLOSE_BOUND
        with pytest.raises(ClosedError):
            await watch.next(1)
        assert [s async for s in watch] == []

    async def test_closing_the_registry_ends_watches_subscriptions_and_caches(
        self, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        from discovery.client.cache import ServiceCache

        registry = await open_registry()
        await registry.register(make_instance("ending", 1))
        watch = registry.watch("ending")
        await watch.until(lambda s: len(s) == 1, CONVERGENCE_TIMEOUT)
        consumer = asyncio.create_task(_drain(watch))
        waiter = asyncio.create_task(registry.watch("ending").until(lambda _s: False))
        ended = asyncio.Event()
        registry.subscribe("ending", lambda _s: None, on_end=ended.set)
        cache = await ServiceCache.open_async(registry, "ending", ready_timeout=CONVERGENCE_TIMEOUT)
        assert [i.id for i in cache.instances()] == ["ending-1"]
        await asyncio.sleep(0)
        started = time.monotonic()
        closing = asyncio.create_task(registry.close())
        await asyncio.wait_for(consumer, CLOSE_BOUND)
        await asyncio.wait_for(ended.wait(), CLOSE_BOUND)
        with pytest.raises(ClosedError):
            await asyncio.wait_for(waiter, CLOSE_BOUND)
        assert cache.closed
        assert time.monotonic() - started <= CLOSE_BOUND
        await closing
        with pytest.raises(ClosedError):
            cache.pick()

    async def test_every_call_after_close_raises_closed_error(
        self, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        registry = await open_registry()
        registration = await registry.register(make_instance("after", 1))
        await registry.close()
        await registry.close()  # idempotent
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: registry.register(make_instance("after", 2)),
            lambda: registry.instances("after"),
            lambda: registry.snapshot("after"),
            lambda: registry.services(),
            lambda: registry.start(),
        ]
        for call in calls:
            with pytest.raises(ClosedError):
                await call()
        with pytest.raises(ClosedError):
            registry.watch("after")
        with pytest.raises(ClosedError):
            registry.subscribe("after", lambda _s: None)
        assert registration.state is RegistrationState.DEREGISTERED
        await registration.deregister()  # idempotent, as for any deregistered registration

    async def test_blocking_registrations_are_freed_once_deregistered(self, discovery_url: str) -> None:
        """A process registering per job through the blocking facade does not keep every registration it ever made:
        once deregistered (and its handle dropped) a registration is freed while the registry stays open."""
        alive = await asyncio.to_thread(_blocking_churn_case, discovery_url)
        assert len(alive) == 1 and alive[0].endswith("-0"), f"still alive: {alive}"

    async def test_blocking_registry_close_ends_iteration_and_refuses_later_calls(self, discovery_url: str) -> None:
        await asyncio.to_thread(_blocking_close_case, discovery_url)

    @requires("networked")
    async def test_a_failed_connect_names_the_url_and_leaves_nothing_behind(self, discovery_url: str) -> None:
        url = parse_url(discovery_url)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            refused_port = probe.getsockname()[1]
        with socket.socket() as silent:  # accepts connections (the kernel does) but never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen(64)
            silent_port = silent.getsockname()[1]
            for port, timeout in ((refused_port, 3.0), (silent_port, 1.0)):
                await _connect_fails_cleanly(dataclasses.replace(url, endpoints=(Endpoint("127.0.0.1", port),)),
                                             timeout)
            # The same through the blocking facade, whose loop thread must go too.
            dead = dataclasses.replace(url, endpoints=(Endpoint("127.0.0.1", silent_port),))
            threads = _threads()
            with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{silent_port}"):
                await asyncio.to_thread(Registry.connect, dead, timeout=1.0)
            allowed = threads | _to_thread_workers()
            await eventually(_value(_threads), allowed.issuperset, 5.0)

    # -- ownership: the last registrant owns an instance id -------------------------------------------------------

    async def remove_as_operator(self, discovery_url: str, instance: Instance) -> None:
        """Delete ``instance``'s record the way an operator would: with the server's own client, not a registry.

        The in-tree suites implement this per backend; a backend author's suite that does not skips the one case
        that needs it, saying so.
        """
        pytest.skip("this suite does not implement remove_as_operator()")

    async def test_last_registrant_owns_an_instance_id(
        self, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        first, second, reader = await open_registry(), await open_registry(), await open_registry()
        old = make_instance("owned", 1, labels={"gen": "a"})
        new = make_instance("owned", 1, labels={"gen": "b"}, weight=2)
        a = await first.register(old, ttl=self.short_ttl)
        bound = a.detection_bound + SCHEDULING_ALLOWANCE
        seen: list[str | None] = []

        def record(snapshot: Snapshot) -> None:
            member = snapshot.get("owned-1")
            generation = None if member is None else member.labels["gen"]
            if not seen or seen[-1] != generation:
                seen.append(generation)

        unsubscribe = reader.subscribe("owned", record)
        try:
            async with reader.watch("owned") as watch:
                await watch.until(lambda s: s.get("owned-1") == old, CONVERGENCE_TIMEOUT)
                b = await second.register(new, ttl=self.short_ttl)
                await watch.until(lambda s: s.get("owned-1") == new, CONVERGENCE_TIMEOUT)
                await a.wait_for(RegistrationState.LOST, bound)
                assert a.lost_reason is LostReason.TAKEN_OVER
                with pytest.raises(NotRegisteredError):
                    await a.update(weight=5)  # nothing written
                await a.deregister()  # removes nothing: the id is the newcomer's
                with pytest.raises(TimeoutError):  # ...and the evicted one never fights back, whatever it does
                    await watch.until(lambda s: s.get("owned-1") != new, bound)
                await first.close()
                with pytest.raises(TimeoutError):
                    await watch.until(lambda s: s.get("owned-1") != new, SCHEDULING_ALLOWANCE)
                assert await reader.backend.list("default", "owned") == (new,)
                assert b.state is RegistrationState.REGISTERED
                await b.deregister()
                await watch.until(lambda s: "owned-1" not in s.ids(), CONVERGENCE_TIMEOUT)
        finally:
            await unsubscribe()
        assert a.history == (RegistrationState.REGISTERED, RegistrationState.LOST, RegistrationState.DEREGISTERED)
        assert b.history == (RegistrationState.REGISTERED, RegistrationState.DEREGISTERED)
        assert seen == ["a", "b", None], f"the watcher saw {seen}"
        assert await reader.backend.list("default", "owned") == ()

    async def test_a_record_removed_by_an_operator_is_written_back(
        self, registry: AsyncRegistry, discovery_url: str
    ) -> None:
        instance = make_instance("operator", 1)
        registration = await registry.register(instance, ttl=self.short_ttl)
        bound = registration.detection_bound + SCHEDULING_ALLOWANCE
        async with registry.watch("operator") as watch:
            await watch.until(lambda s: s.get("operator-1") == instance, CONVERGENCE_TIMEOUT)
            started = time.monotonic()
            await self.remove_as_operator(discovery_url, instance)
            await registration.wait_for(RegistrationState.RESTORED, bound)
            elapsed = time.monotonic() - started
            # The watch shows it again: a watch may also never have shown it missing (a write-back quicker than
            # the watch, coalesced), so the registry's latest view is read rather than a next snapshot awaited.
            await eventually(
                _value(lambda: registry.cached_snapshot("operator")),
                lambda shown: shown is not None and shown.get("operator-1") == instance,
                CONVERGENCE_TIMEOUT,
            )
        assert elapsed <= bound, f"written back after {elapsed:.1f} s; the bound is {bound:.1f} s"
        assert registration.lost_reason is LostReason.REMOVED
        assert registration.history == (
            RegistrationState.REGISTERED, RegistrationState.LOST, RegistrationState.RESTORED
        )
        assert await registry.backend.list("default", "operator") == (instance,)

    # -- session guarantees: read-your-writes, monotonic reads --------------------------------------------------

    async def test_every_read_reflects_the_registrys_own_writes(self, registry: AsyncRegistry) -> None:
        from discovery.client.cache import ServiceCache

        received: list[Snapshot] = []
        unsubscribe = registry.subscribe("ryw", received.append)
        cache = await ServiceCache.open_async(registry, "ryw", ready_timeout=CONVERGENCE_TIMEOUT)
        watch = registry.watch("ryw")
        await watch.next(CONVERGENCE_TIMEOUT)
        try:
            for n in range(10):
                instance = make_instance("ryw", n)
                registration = await registry.register(instance)
                # No waiting of any kind: the write has returned, so every read must show it.
                assert instance in await registry.instances("ryw"), f"register {n}: lookup missed it"
                assert instance in registry.cached_snapshot("ryw")  # type: ignore[operator]
                assert instance in received[-1], f"register {n}: the subscription's last snapshot missed it"
                assert instance in cache.instances(), f"register {n}: the ServiceCache missed it"
                assert instance in await watch.next(1), f"register {n}: the watch's next snapshot missed it"
                updated = await registration.update(weight=5)
                assert updated in await registry.instances("ryw"), f"update {n}: lookup has the old value"
                assert updated in received[-1] and updated in cache.instances()
                assert updated in await watch.next(1)
                if n % 2:
                    await registration.deregister()
                    assert instance.id not in {i.id for i in await registry.instances("ryw", statuses=None)}
                    assert instance.id not in received[-1].ids() and updated not in cache.instances()
                    assert instance.id not in (await watch.next(1)).ids()
            # A service nobody watches is read from the backend: the same guarantee.
            plain = await registry.register(make_instance("ryw-plain", 1))
            assert await registry.instances("ryw-plain") == (plain.instance,)
            assert "ryw-plain" in await registry.services()
            await plain.deregister()
            assert await registry.instances("ryw-plain", statuses=None) == ()
            assert "ryw-plain" not in await registry.services()
        finally:
            await watch.aclose()
            await cache.aclose()
            await unsubscribe()

    async def test_reads_never_go_back_to_an_older_snapshot(
        self, registry: AsyncRegistry, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        writer = await open_registry()
        handed_out: list[tuple[str, int]] = []
        watch = registry.watch("mono")
        slow = registry.watch("mono")  # never read during the churn: its backlog is older than everything after
        await watch.next(CONVERGENCE_TIMEOUT)
        await slow.next(CONVERGENCE_TIMEOUT)
        registrations = []
        try:
            for n in range(12):
                registrations.append(await writer.register(make_instance("mono", n)))
                if n % 3 == 2:
                    await registrations[n - 1].deregister()
                handed_out.append(("lookup", (await registry.snapshot("mono")).revision))
                with contextlib.suppress(TimeoutError):
                    handed_out.append(("watch", (await watch.next(0.05)).revision))
            await eventually(
                lambda: registry.snapshot("mono"), lambda s: len(s) == 8, CONVERGENCE_TIMEOUT
            )
            handed_out.append(("lookup", (await registry.snapshot("mono")).revision))
            handed_out.append(("lagging watch", (await slow.next(CONVERGENCE_TIMEOUT)).revision))
            own = await registry.register(make_instance("mono", 99))
            handed_out.append(("lookup after own write", (await registry.snapshot("mono")).revision))
            handed_out.append(("lagging watch", (await slow.next(CONVERGENCE_TIMEOUT)).revision))
            await own.deregister()
        finally:
            await watch.aclose()
            await slow.aclose()
        revisions = [revision for _, revision in handed_out]
        went_back = [(i, handed_out[i]) for i in range(1, len(revisions)) if revisions[i] < max(revisions[:i])]
        assert not went_back, f"older snapshots handed out after newer ones: {went_back} in {handed_out}"

    async def test_a_registry_whose_id_was_taken_can_take_it_back(
        self, open_registry: Callable[[], Awaitable[AsyncRegistry]]
    ) -> None:
        first, second = await open_registry(), await open_registry()
        mine, theirs = make_instance("back", 1, labels={"gen": "a"}), make_instance("back", 1, labels={"gen": "b"})
        evicted = await first.register(mine, ttl=self.short_ttl)
        bound = evicted.detection_bound + SCHEDULING_ALLOWANCE
        newcomer = await second.register(theirs, ttl=self.short_ttl)
        await evicted.wait_for(RegistrationState.LOST, bound)
        assert evicted.lost_reason is LostReason.TAKEN_OVER
        again = await first.register(mine, ttl=self.short_ttl)  # the last registrant wins, whoever it is
        assert again is not evicted and again.state is RegistrationState.REGISTERED
        assert evicted.state is RegistrationState.DEREGISTERED
        await newcomer.wait_for(RegistrationState.LOST, bound)
        assert newcomer.lost_reason is LostReason.TAKEN_OVER
        assert await second.backend.list("default", "back") == (mine,)
