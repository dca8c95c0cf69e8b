"""The memory backend's keep-alive refreshes each entry when it is due, not on every registration."""

from __future__ import annotations

import time
import uuid

import pytest

from discovery import Instance, RegistrationState, Registry
from discovery.memory import MemoryStore, memory_store


def _counting_refreshes(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    refreshed: list[tuple[str, str, str]] = []
    original = store.refresh

    def refresh(key: tuple[str, str, str], owner: int) -> str:
        refreshed.append(key)
        return original(key, owner)

    monkeypatch.setattr(store, "refresh", refresh)
    return refreshed


def test_registering_does_not_refresh_what_is_already_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"keepalive-{uuid.uuid4().hex}"
    refreshed = _counting_refreshes(memory_store(name), monkeypatch)
    with Registry.connect(f"memory:///{name}") as registry:
        for n in range(200):
            registry.register(Instance("web", f"w{n}", "127.0.0.1", 80), ttl=30)
        registry.services()  # a round trip through the registry after the last wake-up
    # None is due for 10 s (TTL/3). Before, each registration woke the keep-alive, which refreshed everything
    # owned: ~20 000 refreshes for 200 registrations.
    assert refreshed == []


def test_a_short_ttl_registered_after_long_ones_is_refreshed_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"keepalive-{uuid.uuid4().hex}"
    refreshed = _counting_refreshes(memory_store(name), monkeypatch)
    with Registry.connect(f"memory:///{name}") as registry:
        for n in range(20):
            registry.register(Instance("web", f"long{n}", "127.0.0.1", 80), ttl=30)
        short = registry.register(Instance("web", "short", "127.0.0.1", 80), ttl=0.3)
        deadline = time.monotonic() + 10
        while refreshed.count(("default", "web", "short")) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert refreshed.count(("default", "web", "short")) >= 5
        assert short.history == (RegistrationState.REGISTERED,)  # never lost: refreshed before each deadline
        assert not any(key[2].startswith("long") for key in refreshed)  # the long ones were not due
