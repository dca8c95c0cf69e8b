"""The one fan-out: per registry, one backend watch per watched service, shared by every subscriber.

Holds docs/decisions/watch-fan-out.md: the registry's hub is the only place a backend watch is shared (the
adapters' ``watch()`` is a plain stream per call), and two registries do not share one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from discovery import AsyncRegistry, Instance, Snapshot
from discovery.memory import MemoryBackend, memory_store

pytestmark = pytest.mark.asyncio

TIMEOUT = 5.0


class CountingBackend(MemoryBackend):
    """The memory backend, counting the watch streams opened and still open."""

    def __init__(self, store_name: str) -> None:
        super().__init__(memory_store(store_name))
        self.opened = 0
        self.open_now = 0

    async def watch(self, namespace: str, service: str) -> AsyncIterator[Snapshot]:
        self.opened += 1
        self.open_now += 1
        try:
            async for snapshot in super().watch(namespace, service):
                yield snapshot
        finally:
            self.open_now -= 1


async def _poll(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_subscribers_of_one_registry_share_one_backend_watch() -> None:
    store = f"hub-{uuid.uuid4().hex}"
    backend = CountingBackend(store)
    writer = await AsyncRegistry.connect(f"memory:///{store}")
    registry = AsyncRegistry(backend)
    await registry.start()
    try:
        seen: list[list[Snapshot]] = [[] for _ in range(3)]
        unsubscribers = [registry.subscribe("web", seen[k].append) for k in range(3)]
        watches = [registry.watch("web"), registry.watch("web")]
        for watch in watches:
            await watch.next(TIMEOUT)
        await _poll(lambda: all(seen))
        assert backend.opened == 1, "five subscribers, one backend watch"

        await writer.register(Instance("web", "w1", "127.0.0.1", 80))
        for watch in watches:
            assert (await watch.until(lambda s: "w1" in s.ids(), TIMEOUT)).ids() == {"w1"}
        await _poll(lambda: all("w1" in subscriber[-1].ids() for subscriber in seen))
        assert backend.opened == 1

        for unsubscribe in unsubscribers:
            await unsubscribe()
        assert backend.open_now == 1, "the watch stays while a subscriber is left"
        for watch in watches:
            await watch.aclose()
        await _poll(lambda: backend.open_now == 0)

        again = registry.watch("web")
        assert (await again.next(TIMEOUT)).ids() == {"w1"}
        assert backend.opened == 2, "a new subscriber after the last one left opens a new backend watch"
        await again.aclose()
    finally:
        await registry.close()
        await writer.close()


async def test_each_registry_has_its_own_backend_watch() -> None:
    store = f"hub-{uuid.uuid4().hex}"
    backends = [CountingBackend(store), CountingBackend(store)]
    registries = [AsyncRegistry(backend) for backend in backends]
    try:
        for registry in registries:
            await registry.start()
            for _ in range(2):
                await registry.watch("web").next(TIMEOUT)
        assert [backend.opened for backend in backends] == [1, 1]
    finally:
        for registry in registries:
            await registry.close()
