"""The blocking facade over the in-memory backend: handles, watches, cache reads, lost/restored."""

from __future__ import annotations

import gc
import threading
import uuid
from collections.abc import Iterator

import pytest

from discovery import ClosedError, Instance, NotRegisteredError, RegistrationState, Registry, Status
from discovery.memory import memory_store
from discovery.registry.registration import AsyncRegistration


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


def test_writes_and_reads_on_memory_are_done_in_the_callers_thread(registry: Registry) -> None:
    # The loop thread is held busy: every call below must finish without it, so none of them hops threads.
    release = threading.Event()
    loop_thread_blocked = threading.Event()

    def block_loop() -> None:
        loop_thread_blocked.set()
        release.wait(10)

    answers: list[object] = []

    def calls() -> None:
        registration = registry.register(Instance("web", "w1", "127.0.0.1", 80))
        answers.append(registry.instances("web"))
        registration.update(status=Status.DRAINING)
        answers.append(registry.snapshot("web").instances[0].status)
        answers.append(registry.services())
        registration.deregister()
        answers.append(registration.state)

    registry.loop.call_soon_threadsafe(block_loop)
    assert loop_thread_blocked.wait(5)
    caller = threading.Thread(target=calls)
    try:
        caller.start()
        caller.join(5)
        assert not caller.is_alive(), "a blocking call waited for the loop thread"
    finally:
        release.set()
        caller.join(5)
    assert [i.id for i in answers[0]] == ["w1"]  # type: ignore[attr-defined]
    assert answers[1:] == [Status.DRAINING, ("web",), RegistrationState.DEREGISTERED]


def test_state_listeners_run_on_the_loop_thread_after_an_in_thread_write(registry: Registry) -> None:
    registration = registry.register(Instance("web", "w1", "127.0.0.1", 80))
    heard: list[tuple[RegistrationState, threading.Thread]] = []
    done = threading.Event()

    def listener(_registration: object, state: RegistrationState) -> None:
        heard.append((state, threading.current_thread()))
        done.set()

    registration.on_change(listener)
    registration.deregister()  # in this thread, on memory
    assert registration.state is RegistrationState.DEREGISTERED  # at once
    assert done.wait(5)
    assert [state for state, _ in heard] == [RegistrationState.DEREGISTERED]
    assert heard[0][1] is not threading.current_thread()
    assert heard[0][1].name == "discovery-loop"


def test_registrations_racing_close_leave_nothing_behind(url: str) -> None:
    registry = Registry.connect(url)
    made: list[object] = []
    started = threading.Barrier(9)
    first_made = threading.Event()

    def registrant(worker: int) -> None:
        started.wait(5)
        for n in range(200):
            try:
                made.append(registry.register(Instance("web", f"w{worker}-{n}", "127.0.0.1", 80), ttl=30))
            except ClosedError:
                return
            first_made.set()

    threads = [threading.Thread(target=registrant, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    started.wait(5)
    # close() once registrations are under way (closing right after the barrier sometimes won before any of
    # them, and the race was not exercised), while 8 threads still have up to 1 599 of them to make.
    assert first_made.wait(10), "no registration was made"
    registry.close()
    for thread in threads:
        thread.join(10)
    assert made, "no registration got in before close(): the race was not exercised"
    assert all(r.state is RegistrationState.DEREGISTERED for r in made)  # type: ignore[attr-defined]
    assert memory_store(url.removeprefix("memory:///")).keys() == frozenset()


def test_registrations_made_through_the_facade_are_freed_once_deregistered(registry: Registry) -> None:
    """A registration made and deregistered through the blocking facade is not kept by it while the registry stays
    open (it kept every one: its handle, held by a weak-keyed map, held that map's key), and a handle still held is
    the one registering its id again returns."""
    kept = registry.register(Instance("freed", "kept", "127.0.0.1", 80))
    for n in range(200):
        registry.register(Instance("freed", f"i{n}", "127.0.0.1", 80)).deregister()
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, AsyncRegistration) and o.instance.service == "freed"]
    assert [o.instance.id for o in alive] == ["kept"]
    assert registry.register(Instance("freed", "kept", "127.0.0.1", 80, weight=2)) is kept
