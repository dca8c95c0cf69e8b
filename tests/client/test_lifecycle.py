"""drain() and the health-check hook over a real registry (memory backend)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from discovery import AsyncRegistry, Instance, Registry, Snapshot, Status, ValidationError
from discovery.client.lifecycle import AsyncHealthCheck, HealthCheck, drain, drain_async
from tests.client.polling import wait_until, wait_until_async


@pytest.fixture
def registry(memory_url: str) -> Iterator[Registry]:
    with Registry.connect(memory_url) as registry:
        yield registry


def api(**fields: object) -> Instance:
    return Instance("api", "api-1", "127.0.0.1", 9000, **fields)  # type: ignore[arg-type]


def status_seen(registry: Registry) -> Status | None:
    found = registry.instances("api", statuses=None)
    return found[0].status if found else None


def test_drain_without_an_idle_probe_waits_the_timeout_then_deregisters(registry: Registry) -> None:
    registration = registry.register(api())
    seen: list[Status | None] = []

    def record(snapshot: Snapshot) -> None:
        # A subscription sees every snapshot the watch publishes (a watch iterator read after drain() returned
        # starts at the newest one: it never hands out a snapshot older than the registry already did).
        member = snapshot.get("api-1")
        seen.append(None if member is None else member.status)

    unsubscribe = registry.subscribe("api", record)
    try:
        wait_until(lambda: seen == [Status.UP])
        result = drain(registration, timeout=0.3, settle=0.1)
    finally:
        unsubscribe()
    assert seen == [Status.UP, Status.DRAINING, None]
    assert result.waited >= 0.3 and result.idle
    assert registration.active is False
    assert registry.instances("api", statuses=None) == ()


def test_drain_ends_when_idle_and_reports_a_timeout(registry: Registry) -> None:
    registration = registry.register(api())
    assert drain(registration, timeout=5, idle=lambda: True, settle=0).waited < 5
    again = registry.register(api())
    result = drain(again, timeout=0.2, idle=lambda: False, settle=0)
    assert result.idle is False and result.waited >= 0.2
    assert again.active is False
    assert drain(again, timeout=1).waited == 0.0  # already deregistered: nothing to do


@pytest.mark.parametrize(("option", "value"), [("timeout", -1.0), ("settle", -0.5)])
def test_drain_rejects_negative_times_and_writes_nothing(registry: Registry, option: str, value: float) -> None:
    registration = registry.register(api())
    with pytest.raises(ValidationError):
        drain(registration, **{option: value})  # type: ignore[arg-type]
    assert status_seen(registry) is Status.UP


def test_health_check_flips_between_up_and_down(registry: Registry) -> None:
    healthy = [True]
    registration = registry.register(api(status=Status.STARTING))
    with HealthCheck(registration, lambda: healthy[0], interval=0.02, rise=2):
        wait_until(lambda: status_seen(registry) is Status.UP, 5, "STARTING -> UP")
        healthy[0] = False
        wait_until(lambda: status_seen(registry) is Status.DOWN, 5, "UP -> DOWN")
        healthy[0] = True
        wait_until(lambda: status_seen(registry) is Status.UP, 5, "DOWN -> UP")


def test_a_raising_check_counts_as_unhealthy(registry: Registry) -> None:
    registration = registry.register(api())

    def broken() -> bool:
        raise RuntimeError("database unreachable")

    with HealthCheck(registration, broken, interval=0.02):
        wait_until(lambda: status_seen(registry) is Status.DOWN, 5, "DOWN after a raising check")


def test_a_health_check_never_undoes_a_drain(registry: Registry) -> None:
    registration = registry.register(api())
    registration.update(status=Status.DRAINING)
    with HealthCheck(registration, lambda: True, interval=0.01) as check:
        wait_until(lambda: check.checks >= 5, 5, "five checks")
    assert status_seen(registry) is Status.DRAINING


def test_health_check_arguments_are_validated(registry: Registry) -> None:
    registration = registry.register(api())
    with pytest.raises(ValidationError):
        HealthCheck(registration, lambda: True, interval=0)
    with pytest.raises(ValidationError):
        HealthCheck(registration, lambda: True, fall=0)


async def test_async_health_check_and_drain(memory_url: str) -> None:
    healthy = [True]

    async def check() -> bool:
        return healthy[0]

    async with AsyncRegistry.connect(memory_url) as registry:
        registration = await registry.register(api())

        async def status() -> Status | None:
            found = await registry.instances("api", statuses=None)
            return found[0].status if found else None

        async with AsyncHealthCheck(registration, check, interval=0.02):
            healthy[0] = False
            await wait_until_async(lambda: registration.instance.status is Status.DOWN, 5)
            assert await status() is Status.DOWN
            healthy[0] = True
            await wait_until_async(lambda: registration.instance.status is Status.UP, 5)
        result = await drain_async(registration, timeout=2, idle=lambda: True, settle=0.05)
        assert result.idle and result.waited < 2
        assert await status() is None
