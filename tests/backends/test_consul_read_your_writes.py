"""Consul read-your-writes is kept by the reads: a write returns once the agent holds it, and the next read of
the service (a lookup, ``services()``, a new watch's first snapshot) waits until the servers' catalog shows it."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest

from discovery.core.backend import RegistrationState
from discovery.core.models import Instance
from discovery_consul.connection import ConsulClient
from tests.backends.consul_support import started_backend
from tests.harness import ServerHandle

pytestmark = pytest.mark.servers


def ignore_state(state: RegistrationState, reason: object = None) -> None:
    """An ``on_state`` listener for registrations whose state the test does not follow."""


@pytest.fixture
def health_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts ``/v1/health/service`` requests by service (the real requests are still made)."""
    counted: Counter[str] = Counter()
    real = ConsulClient.health_service

    async def counting(self: ConsulClient, service: str, *args: Any, **kwargs: Any) -> Any:
        counted[service] += 1
        return await real(self, service, *args, **kwargs)

    monkeypatch.setattr(ConsulClient, "health_service", counting)
    return counted


async def test_writes_do_not_query_the_catalog_and_the_next_read_shows_them(
    consul_server: ServerHandle, health_reads: Counter[str]
) -> None:
    backend = await started_backend(f"{consul_server.url}/ryw-{uuid.uuid4().hex[:8]}")
    try:
        instances = [Instance("orders", f"o{n}", "127.0.0.1", 9000 + n) for n in range(20)]
        for instance in instances:
            await backend.register(instance, 10.0, ignore_state)
        # Each write waited for the catalog with a blocking health query: 20 queries (at least) before.
        assert health_reads["orders"] == 0
        assert set(await backend.list("default", "orders")) == set(instances)
        assert "orders" in await backend.services("default")
        await backend.deregister(instances[0])
        assert instances[0] not in await backend.list("default", "orders")
        stream = backend.watch("default", "orders")
        try:
            first = await anext(stream)
            assert set(first.instances) == set(instances[1:])
        finally:
            await stream.aclose()
    finally:
        await backend.close()
