"""ServiceCache over a real registry (memory backend): opening, picks in the caller's thread, selectors,
tracking, closing, and the asyncio form."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from discovery import AsyncRegistry, ClosedError, Instance, Registry, Status, ValidationError
from discovery.client.balancers import NoInstanceAvailableError, PowerOfTwoChoices, RoundRobin
from discovery.client.cache import ServiceCache
from discovery.client.feedback import DownInstancePolicy
from tests.client.polling import wait_until, wait_until_async


@pytest.fixture
def registry(memory_url: str) -> Iterator[Registry]:
    with Registry.connect(memory_url) as registry:
        yield registry


def web(number: int, **fields: object) -> Instance:
    return Instance("web", f"web-{number}", "127.0.0.1", 8000 + number, **fields)  # type: ignore[arg-type]


def test_open_waits_for_the_first_snapshot_and_picks_round_robin(registry: Registry) -> None:
    for n in range(3):
        registry.register(web(n))
    with ServiceCache.open(registry, "web") as cache:
        assert cache.snapshot is not None and len(cache.instances()) == 3
        assert [cache.pick().id for _ in range(6)] == ["web-0", "web-1", "web-2"] * 2


def test_an_empty_service_opens_and_a_pick_says_why_it_failed(registry: Registry) -> None:
    with ServiceCache.open(registry, "web") as cache:
        assert cache.instances() == ()
        with pytest.raises(NoInstanceAvailableError, match="default/web"):
            cache.pick()
        registry.register(web(1))
        wait_until(lambda: len(cache.instances()) == 1)
        assert cache.pick().id == "web-1"


def test_picks_are_answered_while_the_loop_thread_is_blocked(registry: Registry) -> None:
    registry.register(web(1))
    with ServiceCache.open(registry, "web") as cache:
        release, blocked = threading.Event(), threading.Event()

        def block_loop() -> None:
            blocked.set()
            release.wait(5)

        registry.loop.call_soon_threadsafe(block_loop)
        assert blocked.wait(5)
        try:
            assert cache.pick().id == "web-1"
            assert cache.instances()[0].id == "web-1"
        finally:
            release.set()


def test_selector_and_statuses_narrow_the_candidates(registry: Registry) -> None:
    registry.register(web(1, labels={"tier": "api"}))
    registry.register(web(2, labels={"tier": "batch"}))
    registry.register(web(3, labels={"tier": "api"}, status=Status.STARTING))
    with ServiceCache.open(registry, "web", selector="tier=api") as cache:
        assert [i.id for i in cache.instances()] == ["web-1"]
    with ServiceCache.open(registry, "web", selector="tier=api", statuses=("UP", "STARTING")) as cache:
        assert [i.id for i in cache.instances()] == ["web-1", "web-3"]


def test_bad_arguments_are_validation_errors_and_nothing_is_subscribed(registry: Registry) -> None:
    with pytest.raises(ValidationError):
        ServiceCache.open(registry, "Not_A_Service")
    with pytest.raises(ValidationError):
        ServiceCache.open(registry, "web", statuses=("SLEEPY",))
    with pytest.raises(ValidationError):
        ServiceCache.open(registry, "web", failures="often")
    assert registry.async_registry.cached_snapshot("web") is None


def test_track_reports_outcomes_and_counts_requests_in_flight(registry: Registry) -> None:
    registry.register(web(1))
    balancer = PowerOfTwoChoices(seed=1)
    with ServiceCache.open(registry, "web", balancer=balancer, failures=DownInstancePolicy(error_threshold=1)) as cache:
        with cache.track() as instance:
            assert balancer.outstanding(instance) == 1
        assert balancer.outstanding(instance) == 0
        with pytest.raises(OSError), cache.track() as instance:
            raise OSError("connection refused")
        assert cache.failures.is_down(instance)
        assert balancer.outstanding(instance) == 0
        with cache.track() as again:  # the only instance: still picked (never all down)
            assert again == instance
        assert not cache.failures.is_down(instance)


def test_a_closed_cache_stops_following_and_says_so(registry: Registry) -> None:
    registry.register(web(1))
    cache = ServiceCache.open(registry, "web")
    cache.close()
    assert registry.async_registry.cached_snapshot("web") is None  # the shared watch ended with its subscriber
    registry.register(web(2))
    assert [i.id for i in cache.instances()] == ["web-1"]
    cache.feed(cache.snapshot.with_revision(99))  # type: ignore[union-attr]
    assert cache.snapshot.revision != 99  # type: ignore[union-attr]


def test_a_closed_cache_with_nothing_to_pick_raises_closed_error(registry: Registry) -> None:
    cache = ServiceCache.open(registry, "web")
    cache.close()
    with pytest.raises(ClosedError):
        cache.pick()


async def test_the_asyncio_form(memory_url: str) -> None:
    async with AsyncRegistry.connect(memory_url) as registry:
        first = await registry.register(web(1))
        await registry.register(web(2))
        async with await ServiceCache.open_async(registry, "web", balancer=RoundRobin()) as cache:
            assert [cache.pick().id for _ in range(4)] == ["web-1", "web-2", "web-1", "web-2"]
            await first.update(status=Status.DRAINING)
            await wait_until_async(lambda: [i.id for i in cache.instances()] == ["web-2"])
            assert {cache.pick().id for _ in range(4)} == {"web-2"}
            with pytest.raises(RuntimeError, match="aclose"):
                cache.close()
        assert registry.cached_snapshot("web") is None


async def test_an_async_cache_of_an_unknown_service_opens_empty_and_unsubscribes(memory_url: str) -> None:
    async with AsyncRegistry.connect(memory_url) as registry:
        cache = await ServiceCache.open_async(registry, "web", ready_timeout=5)
        assert cache.instances() == ()
        assert registry.cached_snapshot("web") is not None
        await cache.aclose()
        assert registry.cached_snapshot("web") is None


def test_feedback_from_other_threads_never_replaces_a_newer_snapshot() -> None:
    from discovery import Snapshot

    cache = ServiceCache("web", failures=DownInstancePolicy(error_threshold=1))
    members = [web(n) for n in range(4)]
    cache.feed(Snapshot("web", "default", tuple(members), revision=0))
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            while not stop.is_set():
                for member in members:
                    cache.note_error(member)
                    cache.pick()
                    cache.note_success(member)
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        for revision in range(1, 2001):
            cache.feed(Snapshot("web", "default", tuple(members[: 1 + revision % 4]), revision=revision))
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
    assert errors == []
    assert cache.snapshot is not None and cache.snapshot.revision == 2000
    assert [i.id for i in cache.instances()] == ["web-0"]
