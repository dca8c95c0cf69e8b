"""Fixtures for the Services tests: an isolated backend URL per test on memory and each real backend."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from discovery import AsyncRegistry
from discovery.services import AllocationRanges, Service, ServiceCatalog, ServiceStore
from tests.harness import free_port, isolated_url

BACKENDS = ["memory", "zookeeper", "etcd", "consul"]


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    """One isolated URL per backend kind."""
    if request.param != "memory":
        request.applymarker(pytest.mark.servers)
    tag = f"svc-{uuid.uuid4().hex[:12]}"
    return isolated_url(str(request.param), request, tag, ttl=2, memory_ttl=1, consul_ttl=2)


@pytest.fixture
def memory_url() -> str:
    """A private in-memory store."""
    return f"memory:///svc-{uuid.uuid4().hex[:12]}?ttl=1"


def private_ranges() -> AllocationRanges:
    """ClusterIPs from a private 127.x.y.0/24, node ports from a few currently free ports."""
    subnet = uuid.uuid4().int % 200 + 20
    third = uuid.uuid4().int % 250 + 1
    port = free_port()
    return AllocationRanges.from_text(f"127.{subnet}.{third}.0/24", f"{port}-{port}")


@pytest.fixture
async def registry(backend_url: str) -> AsyncIterator[AsyncRegistry]:
    """A started registry on the parametrized backend."""
    async with AsyncRegistry.connect(backend_url) as connected:
        yield connected


@pytest.fixture
def store(registry: AsyncRegistry) -> ServiceStore:
    """A ServiceStore on the registry's backend with test ranges."""
    return ServiceStore(registry.backend, private_ranges())


@contextlib.asynccontextmanager
async def running_catalog(url: str) -> AsyncIterator[tuple[AsyncRegistry, ServiceStore, ServiceCatalog]]:
    """A registry on ``url``, a ServiceStore with private ranges and a started ServiceCatalog over them."""
    async with AsyncRegistry.connect(url) as registry:
        store = ServiceStore(registry.backend, private_ranges())
        catalog = ServiceCatalog(registry, store, rescan_interval=0.1)
        await catalog.start()
        try:
            yield registry, store, catalog
        finally:
            await catalog.close()


async def apply_and_wait(store: ServiceStore, catalog: ServiceCatalog, service: Service) -> Service:
    """Apply ``service`` and wait until the catalog holds it as stored; returns it as stored."""
    applied = (await store.apply(service)).service
    await catalog.wait_until(lambda c: c.service(*applied.key) == applied, 10)
    return applied
