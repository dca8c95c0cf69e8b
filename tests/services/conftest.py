"""Fixtures for the Services tests: an isolated backend URL per test on memory and each real backend."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from discovery import AsyncRegistry
from discovery.services import AllocationRanges, ServiceStore
from tests.harness.specs import ZK_TICK_MS

BACKENDS = ["memory", "zookeeper", "etcd", "consul"]


def isolated_url(kind: str, request: pytest.FixtureRequest) -> str:
    """A URL whose root/prefix/scope no other test uses (the conformance suite's pattern)."""
    tag = f"svc-{uuid.uuid4().hex[:12]}"
    if kind == "memory":
        return f"memory:///{tag}?ttl=1"
    if kind == "zookeeper":
        server = request.getfixturevalue("zookeeper_server")
        return f"{server.url}/{tag}?session_timeout=2&tick={ZK_TICK_MS / 1000}"
    if kind == "etcd":
        return f"{request.getfixturevalue('etcd_server').url}/{tag}?ttl=2"
    return f"{request.getfixturevalue('consul_server').url}/{tag}?ttl=2"


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    """One isolated URL per backend kind."""
    if request.param != "memory":
        request.applymarker(pytest.mark.servers)
    return isolated_url(str(request.param), request)


@pytest.fixture
def memory_url() -> str:
    """A private in-memory store."""
    return f"memory:///svc-{uuid.uuid4().hex[:12]}?ttl=1"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bind to 0, read it, close)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


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
