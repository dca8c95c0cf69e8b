"""``register_many``: all or none, in the order given, from asyncio and from threads (on memory; the conformance
suite runs the same contract on every backend, and tests/backends/test_zookeeper_writes.py counts its round trips)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from discovery.core.backend import RegistrationState
from discovery.core.errors import BackendUnavailableError, ValidationError
from discovery.core.models import Instance
from discovery.memory import MemoryBackend
from discovery.registry.async_registry import AsyncRegistry
from discovery.registry.blocking import Registry


def _url() -> str:
    return f"memory:///many-{uuid.uuid4().hex}"


async def test_a_failed_registration_undoes_the_others_this_call_made(monkeypatch: pytest.MonkeyPatch) -> None:
    async with await AsyncRegistry.connect(_url()) as registry:
        held = await registry.register(Instance("api", "held", "127.0.0.1", 1))
        register = MemoryBackend.register

        async def refusing(self: MemoryBackend, instance: Instance, ttl: float, on_state: Any) -> None:
            if instance.id == "refused":
                raise BackendUnavailableError("the backend refused it")
            await register(self, instance, ttl, on_state)

        monkeypatch.setattr(MemoryBackend, "register", refusing)
        rewritten = Instance("api", "held", "127.0.0.1", 1, labels={"gen": "2"})
        with pytest.raises(BackendUnavailableError, match="refused"):
            await registry.register_many(
                [Instance("api", "made", "127.0.0.1", 2), Instance("api", "refused", "127.0.0.1", 3), rewritten]
            )
        # "made" was registered and deregistered again; the id held before the call keeps its (rewritten) record.
        assert await registry.instances("api", statuses=None) == (rewritten,)
        assert held.active and held.instance == rewritten


async def test_bad_input_writes_nothing() -> None:
    async with await AsyncRegistry.connect(_url()) as registry:
        with pytest.raises(ValidationError, match="more than once"):
            await registry.register_many([Instance("api", "a", "127.0.0.1", 1), Instance("api", "a", "127.0.0.1", 2)])
        with pytest.raises(ValidationError, match="ttl"):
            await registry.register_many([Instance("api", "b", "127.0.0.1", 1)], ttl=-1)
        assert await registry.instances("api", statuses=None) == ()
        assert await registry.register_many([]) == []


def test_the_blocking_registry_registers_a_batch_in_one_call() -> None:
    with Registry.connect(_url()) as registry:
        batch = [Instance("web", f"w{n}", "127.0.0.1", 8000 + n) for n in range(20)]
        registrations = registry.register_many(batch)
        assert [r.instance for r in registrations] == batch
        assert all(r.state is RegistrationState.REGISTERED for r in registrations)
        assert sorted(registry.instances("web"), key=lambda i: i.port) == batch
        assert registry.register(batch[0]) is registrations[0]  # the same handles as register() gives
        with pytest.raises(ValidationError):
            registry.register_many([Instance("web", "x", "127.0.0.1", 1), Instance("web", "x", "127.0.0.1", 1)])
