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
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import pytest
import pytest_asyncio

from discovery.core.backend import Backend, RegistrationState
from discovery.core.definitions import MAX_DEFINITION_BYTES, DefinitionSnapshot, DefinitionStore
from discovery.core.errors import (
    ClosedError,
    ConfigurationError,
    DiscoveryError,
    NotRegisteredError,
    SelectorError,
    ValidationError,
)
from discovery.core.models import Instance, Snapshot, Status
from discovery.core.plugins import create_backend
from discovery.core.urls import parse_url
from discovery.core.validation import (
    MAX_ID_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    MAX_NAME_LENGTH,
    MAX_NAMED_PORTS,
)
from discovery.registry.async_registry import AsyncRegistry
from discovery.testing.waiting import eventually

Case = TypeVar("Case", bound=Callable[..., Any])
T = TypeVar("T")

#: How long a healthy backend may take to show a change to a watcher or a lookup (not a performance bound).
CONVERGENCE_TIMEOUT = 15.0
#: Scheduling allowance on top of a declared detection bound (a loaded 2-core CI machine).
SCHEDULING_ALLOWANCE = 1.0


#: The optional capabilities a case may require, and how a backend shows that it has each.
REQUIREMENTS: dict[str, Callable[[Backend], bool]] = {
    "cross_process": lambda backend: backend.capabilities.cross_process,
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


def _shows(instance_id: str, instance: Instance) -> Callable[[Snapshot], bool]:
    """A snapshot predicate: the snapshot holds ``instance`` under ``instance_id``."""
    return lambda snapshot: snapshot.get(instance_id) == instance


def _value(read: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """An async probe for :func:`eventually` that reads a value without I/O."""

    async def probe() -> T:
        return read()

    return probe


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
