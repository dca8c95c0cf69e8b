"""Session-wide TLS/auth-enabled servers (tests/harness/secure.py), following ``--servers``; a private memory URL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.harness.pytest_plugin import artifacts_dir, unavailable
from tests.harness.secure import STARTERS, SecureServer
from tests.harness.servers import ServerError


def _secure(kind: str, provider: str) -> Iterator[SecureServer]:
    try:
        server = STARTERS[kind](provider, artifacts_dir())
    except ServerError as error:
        unavailable(f"secure {kind} server ({provider}) unavailable: {error}")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def secure_zookeeper(server_provider: str) -> Iterator[SecureServer]:
    """ZooKeeper: TLS secure client port (client certificates required), digest auth provider."""
    yield from _secure("zookeeper", server_provider)


@pytest.fixture(scope="session")
def secure_etcd(server_provider: str) -> Iterator[SecureServer]:
    """etcd: HTTPS with client certificates, auth on (users ``app`` -> /sec/, ``other`` -> /other/)."""
    yield from _secure("etcd", server_provider)


@pytest.fixture(scope="session")
def secure_consul(server_provider: str) -> Iterator[SecureServer]:
    """Consul: HTTPS with client certificates, ACLs default-deny (tokens for ``sec-*`` and ``other-*``)."""
    yield from _secure("consul", server_provider)


@pytest.fixture
def memory_url() -> str:
    """A private in-memory store (the attacks on the Service layer, DNS, proxy and transport run there)."""
    return f"memory:///sec-{uuid.uuid4().hex[:12]}?ttl=5"
