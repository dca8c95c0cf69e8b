"""The blocking facade over the in-memory backend: handles, watches, cache reads, lost/restored."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from discovery import ClosedError, Instance, NotRegisteredError, RegistrationState, Registry, Status
from discovery.memory import memory_store


@pytest.fixture
def url() -> str:
    return f"memory:///sync-{uuid.uuid4().hex}"


@pytest.fixture
def registry(url: str) -> Iterator[Registry]:
    with Registry.connect(url) as registry:
        yield registry


def test_register_lookup_update_deregister(registry: Registry) -> None:
    registration = registry.register(Instance("web", "w1", "127.0.0.1", 80, labels={"app": "web"}))
    assert registration.state is RegistrationState.REGISTERED
    assert [i.id for i in registry.instances("web", selector="app=web")] == ["w1"]
    registration.update(status=Status.DOWN)
    assert registry.instances("web") == ()
    assert registry.instances("web", statuses=None)[0].status is Status.DOWN
    registration.deregister()
    assert registration.state is RegistrationState.DEREGISTERED
    with pytest.raises(NotRegisteredError):
        registration.update(status=Status.UP)


def test_watched_lookup_is_answered_in_the_callers_thread(registry: Registry) -> None:
    registry.register(Instance("web", "w1", "127.0.0.1", 80))
    with registry.watch("web") as watch:
        first = watch.until(lambda s: len(s) == 1, 5)
        assert registry.snapshot("web") is first
        # Block the loop thread: a cached lookup must still answer, so it cannot be hopping threads.
        release = threading.Event()
        registry.async_registry.backend  # noqa: B018 - touch to show the registry is live
        loop_thread_blocked = threading.Event()

        def block_loop() -> None:
            loop_thread_blocked.set()
            release.wait(5)

        registry.loop.call_soon_threadsafe(block_loop)
        assert loop_thread_blocked.wait(5)
        try:
            assert [i.id for i in registry.instances("web")] == ["w1"]
        finally:
            release.set()


def test_lost_then_restored_when_the_entry_vanishes(registry: Registry, url: str) -> None:
    registration = registry.register(Instance("web", "w1", "127.0.0.1", 80), ttl=0.6)
    states: list[RegistrationState] = []
    registration.on_change(lambda _r, state: states.append(state))
    memory_store(url.removeprefix("memory:///")).remove(("default", "web", "w1"))
    registration.wait_for(RegistrationState.RESTORED, timeout=5)
    assert states == [RegistrationState.LOST, RegistrationState.RESTORED]
    assert [i.id for i in registry.instances("web")] == ["w1"]


def test_closed_registry_refuses_work(url: str) -> None:
    registry = Registry.connect(url)
    registry.close()
    registry.close()
    with pytest.raises(ClosedError):
        registry.async_registry.watch("web")


def test_blocking_call_from_a_callback_is_refused(registry: Registry) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def callback(_snapshot: object) -> None:
        try:
            registry.services()
        except RuntimeError as error:
            errors.append(error)
        done.set()

    unsubscribe = registry.subscribe("web", callback)
    assert done.wait(5)
    unsubscribe()
    assert errors and "async API" in str(errors[0])
