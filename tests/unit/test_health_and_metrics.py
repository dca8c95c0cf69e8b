"""registry.health(), the connection listener and the metrics listener protocol on the memory backend."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from discovery import (
    AsyncRegistry,
    DownInstancePolicy,
    Instance,
    NoInstanceAvailableError,
    RegistrationState,
    Registry,
    ServiceCache,
)
from discovery.core.backend import RegistrationState as State
from discovery.core.connection import ConnectionMonitor, ConnectionState, ConnectionStatus
from discovery.core.models import Snapshot
from discovery.observability import MetricsListener, add_metrics_listener


class Recorder(MetricsListener):
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def on_pick(self, instance: Instance) -> None:
        self.events.append(("pick", instance.id))

    def on_pick_failed(self, namespace: str, service: str, reason: str) -> None:
        self.events.append(("pick_failed", service, reason))

    def on_set_aside(self, namespace: str, service: str, count: int) -> None:
        self.events.append(("set_aside", service, count))

    def on_snapshot(self, snapshot: Snapshot, lag: float) -> None:
        assert lag >= 0
        self.events.append(("snapshot", snapshot.service, tuple(sorted(snapshot.ids())), snapshot.stale))

    def on_registration_state(self, instance: Instance, previous: State | None, state: State) -> None:
        self.events.append(("registration", instance.id, previous, state))

    def on_connection_state(self, status: ConnectionStatus) -> None:
        self.events.append(("connection", status.backend, status.state))


@pytest.fixture
def memory_url() -> str:
    return f"memory:///health-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    remove = add_metrics_listener(recorder)
    yield recorder
    remove()


def test_health_reports_connection_registrations_and_watches(memory_url: str) -> None:
    with Registry.connect(memory_url) as registry:
        registry.register(Instance("web", "web-1", "127.0.0.1", 8080))
        with registry.watch("web") as watch:
            watch.until(lambda s: s.ids() == {"web-1"}, 5)
            health = registry.health()
        assert health.ready and health.problems == ()
        assert health.connection is not None and health.connection.state is ConnectionState.CONNECTED
        assert [(r.service, r.id, r.state) for r in health.registrations] == [("web", "web-1", State.REGISTERED)]
        assert [(w.service, w.stale, w.instances, w.subscribers) for w in health.watches] == [("web", False, 1, 1)]
        document = json.loads(json.dumps(health.as_dict()))
        assert document["ready"] is True and document["connection"]["state"] == "connected"
        assert document["registrations"][0]["state"] == "registered"
    closed = registry.health()
    assert not closed.ready and "the registry is closed" in closed.problems


async def test_a_suspended_connection_makes_health_not_ready(memory_url: str) -> None:
    async with AsyncRegistry.connect(memory_url) as registry:
        registration = await registry.register(Instance("web", "web-1", "127.0.0.1", 8080))
        states: list[ConnectionState] = []
        registry.add_connection_listener(lambda status: states.append(status.state))
        registry.backend.connection.failure("simulated: the link dropped")
        health = registry.health()
        assert not health.ready
        assert health.problems == ("the memory connection is suspended (simulated: the link dropped)",)
        assert states == [ConnectionState.SUSPENDED]
        assert registration.state is RegistrationState.REGISTERED
        registry.backend.connection.contact("back")
        assert registry.health().ready and states == [ConnectionState.SUSPENDED, ConnectionState.RECONNECTED]


def test_the_monitor_goes_lost_after_lost_after_and_back_on_contact() -> None:
    import asyncio

    async def scenario() -> list[ConnectionStatus]:
        seen: list[ConnectionStatus] = []
        monitor = ConnectionMonitor("etcd", lost_after=0.05)
        monitor.add_listener(seen.append)
        monitor.failure("ignored before the first contact")
        monitor.connected("up")
        monitor.contact("no change while connected")
        monitor.failure("stream broke")
        monitor.failure("still down")
        while monitor.state is not ConnectionState.LOST:
            await asyncio.sleep(0.01)
        monitor.contact("answered")
        return seen

    seen = asyncio.run(scenario())
    assert [(s.state, s.previous) for s in seen] == [
        (ConnectionState.CONNECTED, None),
        (ConnectionState.SUSPENDED, ConnectionState.CONNECTED),
        (ConnectionState.LOST, ConnectionState.SUSPENDED),
        (ConnectionState.RECONNECTED, ConnectionState.LOST),
    ]
    assert seen[2].detail == "no server answered for 0.05 s"


def test_metrics_listener_hears_picks_failures_set_asides_snapshots_and_states(
    memory_url: str, recorder: Recorder
) -> None:
    with Registry.connect(memory_url) as registry:
        registration = registry.register(Instance("web", "web-1", "127.0.0.1", 8080))
        registry.register(Instance("web", "web-2", "127.0.0.1", 8081))
        policy = DownInstancePolicy(error_threshold=1)
        with ServiceCache.open(registry, "web", failures=policy) as cache:
            first = cache.pick()
            cache.note_error(first)
            second = cache.pick()
            assert second.id != first.id
            with ServiceCache.open(registry, "nothing") as empty, pytest.raises(NoInstanceAvailableError):
                empty.pick()
        registration.deregister()
    events = recorder.events
    assert ("connection", "memory", ConnectionState.CONNECTED) in events
    assert ("registration", "web-1", None, State.REGISTERED) in events
    assert ("registration", "web-1", State.REGISTERED, State.DEREGISTERED) in events
    assert ("snapshot", "web", ("web-1", "web-2"), False) in events
    assert [e for e in events if e[0] == "pick"] == [("pick", first.id), ("pick", second.id)]
    assert ("set_aside", "web", 1) in events
    assert ("pick_failed", "nothing", "no-instance") in events


def test_a_listener_that_raises_is_logged_not_fatal(memory_url: str, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(MetricsListener):
        def on_pick(self, instance: Instance) -> None:
            raise RuntimeError("boom")

    remove = add_metrics_listener(Broken())
    try:
        with Registry.connect(memory_url) as registry:
            registry.register(Instance("web", "web-1", "127.0.0.1", 8080))
            with ServiceCache.open(registry, "web") as cache:
                assert cache.pick().id == "web-1"
    finally:
        remove()
    assert "metrics listener" in caplog.text and "failed on pick" in caplog.text


def test_only_metrics_listeners_can_be_added() -> None:
    with pytest.raises(TypeError, match="MetricsListener"):
        add_metrics_listener(object())  # type: ignore[arg-type]
