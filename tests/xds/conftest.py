"""Fixtures for the xDS tests: an isolated registry per backend, echo servers and client processes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from discovery import AsyncRegistry
from tests.harness.specs import ZK_TICK_MS
from tests.xds.support import EchoServer, XdsClientProcess

#: The backends the issue's client cases run on: memory for the fast ones, etcd and ZooKeeper.
REAL_BACKENDS = ["etcd", "zookeeper"]


def isolated_url(kind: str, request: pytest.FixtureRequest, ttl: float = 2.0) -> str:
    """A URL whose root/prefix no other test uses."""
    tag = f"xds-{uuid.uuid4().hex[:12]}"
    if kind == "memory":
        return f"memory:///{tag}?ttl=1"
    if kind == "zookeeper":
        server = request.getfixturevalue("zookeeper_server")
        return f"{server.url}/{tag}?session_timeout={ttl:g}&tick={ZK_TICK_MS / 1000}"
    if kind == "etcd":
        return f"{request.getfixturevalue('etcd_server').url}/{tag}?ttl={ttl:g}"
    return f"{request.getfixturevalue('consul_server').url}/{tag}?ttl={ttl:g}"


@pytest.fixture
async def memory_registry() -> AsyncIterator[AsyncRegistry]:
    async with AsyncRegistry.connect(f"memory:///xds-{uuid.uuid4().hex[:12]}?ttl=1") as registry:
        yield registry


@pytest.fixture
def echo_servers() -> Iterator[Callable[[int], list[EchoServer]]]:
    """``echo_servers(n)`` -> n started echo servers named s0..s(n-1) (stopped after the test)."""
    made: list[EchoServer] = []

    def make(count: int, prefix: str = "s") -> list[EchoServer]:
        servers = [EchoServer(f"{prefix}{len(made) + i}") for i in range(count)]
        made.extend(servers)
        return servers

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def xds_clients() -> Iterator[Callable[..., XdsClientProcess]]:
    """``xds_clients(bootstrap)`` -> a gRPC client process (killed after the test)."""
    made: list[XdsClientProcess] = []

    def make(bootstrap: dict[str, object], **options: object) -> XdsClientProcess:
        client = XdsClientProcess(bootstrap, **options)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
