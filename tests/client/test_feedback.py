"""Failure feedback (Curator's DownInstancePolicy) with a hand-advanced clock, alone and inside a cache."""

from __future__ import annotations

import pytest

from discovery import Instance, Snapshot, Status, ValidationError
from discovery.client.balancers import RoundRobin, ZoneAware
from discovery.client.cache import ServiceCache
from discovery.client.feedback import DownInstancePolicy, FailureTracker


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def instance(name: str, **fields: object) -> Instance:
    return Instance("svc", name, "127.0.0.1", 8000, **fields)  # type: ignore[arg-type]


def fed_cache(instances: tuple[Instance, ...], clock: Clock, **options: object) -> ServiceCache:
    cache = ServiceCache("svc", failures=FailureTracker(clock=clock), **options)  # type: ignore[arg-type]
    cache.feed(Snapshot("svc", "default", instances, revision=1))
    return cache


def test_curator_defaults() -> None:
    assert DownInstancePolicy() == DownInstancePolicy(error_threshold=2, window=30.0, cooldown=30.0)


def test_two_errors_in_the_window_make_an_instance_down_until_the_cooldown_ends() -> None:
    clock = Clock()
    tracker = FailureTracker(clock=clock)
    a = instance("a")
    assert tracker.note_error(a) is False
    assert not tracker.is_down(a)
    clock.now += 10
    assert tracker.note_error(a) is True
    assert tracker.is_down(a)
    clock.now += 29.9
    assert tracker.is_down(a)
    clock.now += 0.2
    assert not tracker.is_down(a)
    assert tracker.down() == {}


def test_errors_further_apart_than_the_window_do_not_add_up() -> None:
    clock = Clock()
    tracker = FailureTracker(clock=clock)
    a = instance("a")
    tracker.note_error(a)
    clock.now += 30.5
    assert tracker.note_error(a) is False
    assert not tracker.is_down(a)


def test_a_success_clears_errors_and_a_down_mark() -> None:
    clock = Clock()
    tracker = FailureTracker(DownInstancePolicy(error_threshold=2), clock=clock)
    a = instance("a")
    tracker.note_error(a)
    tracker.note_success(a)
    assert tracker.note_error(a) is False
    tracker.note_error(a)
    assert tracker.is_down(a)
    assert tracker.note_success(a) is True
    assert not tracker.is_down(a)


def test_the_same_id_at_a_new_address_starts_clean() -> None:
    tracker = FailureTracker(DownInstancePolicy(error_threshold=1))
    tracker.note_error(instance("a"))
    assert tracker.is_down(instance("a"))
    assert not tracker.is_down(instance("a").with_changes(port=9000))


@pytest.mark.parametrize(
    ("field", "options"),
    [("error_threshold", {"error_threshold": 0}), ("window", {"window": 0}), ("cooldown", {"cooldown": -1.0})],
)
def test_a_bad_policy_is_a_validation_error(field: str, options: dict[str, float]) -> None:
    with pytest.raises(ValidationError) as error:
        DownInstancePolicy(**options)  # type: ignore[arg-type]
    assert error.value.field == field


def test_a_cache_skips_a_down_instance_and_takes_it_back_after_the_cooldown() -> None:
    clock = Clock()
    a, b, c = instance("a"), instance("b"), instance("c")
    cache = fed_cache((a, b, c), clock)
    cache.note_error(b)
    assert b in cache.pickable()
    cache.note_error(b)
    assert cache.pickable() == (a, c)
    assert b.id not in {cache.pick().id for _ in range(30)}
    clock.now += 31
    assert cache.pickable() == (a, b, c)
    assert b.id in {cache.pick().id for _ in range(30)}


def test_when_every_instance_is_down_the_cache_picks_from_all_of_them() -> None:
    clock = Clock()
    a, b = instance("a"), instance("b")
    cache = fed_cache((a, b), clock)
    for down in (a, a, b, b):
        cache.note_error(down)
    assert cache.failures.is_down(a) and cache.failures.is_down(b)
    assert cache.pickable() == (a, b)
    assert {cache.pick().id for _ in range(4)} == {"a", "b"}


def test_down_marks_survive_a_new_snapshot() -> None:
    clock = Clock()
    a, b = instance("a"), instance("b")
    cache = fed_cache((a, b), clock)
    cache.note_error(a)
    cache.note_error(a)
    c = instance("c")
    cache.feed(Snapshot("svc", "default", (a, b, c), revision=2))
    assert cache.pickable() == (b, c)


def test_zone_spill_over_when_local_instances_fail() -> None:
    clock = Clock()
    local = (instance("l1", zone="eu-1a"), instance("l2", zone="eu-1a"))
    remote = (instance("r1", zone="eu-1b"),)
    cache = fed_cache(local + remote, clock, balancer=ZoneAware("eu-1a", RoundRobin()))
    assert {cache.pick().id for _ in range(10)} == {"l1", "l2"}
    for failed in (local[0], local[0]):
        cache.note_error(failed)
    assert {cache.pick().id for _ in range(10)} == {"l2"}
    for failed in (local[1], local[1]):
        cache.note_error(failed)
    assert {cache.pick().id for _ in range(10)} == {"r1"}
    cache.note_success(local[1])
    assert {cache.pick().id for _ in range(10)} == {"l2"}


def test_only_up_instances_are_candidates_by_default() -> None:
    clock = Clock()
    up, draining, down = instance("a"), instance("b", status=Status.DRAINING), instance("c", status=Status.DOWN)
    cache = fed_cache((up, draining, down), clock)
    assert cache.instances() == (up,)
    everyone = fed_cache((up, draining, down), clock, statuses=None)
    assert len(everyone.instances()) == 3
