"""Findings 8 and 12 (proxy): loops, and what one client may hold.

Before the fix an endpoint whose address was the Service's own ClusterIP made the proxy connect to itself (one
client connection became 189 proxied connections, until the file-descriptor limit); there was no connection cap,
no idle or half-open timeout, and the per-endpoint counters grew with every endpoint ever seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from discovery import AsyncRegistry, Instance
from discovery.registry.registration import AsyncRegistration
from discovery.services import Service, ServiceCatalog, ServicePort, ServiceStore, ServiceType
from discovery.services.proxy import ServiceProxy
from discovery.testing import eventually
from tests.services.conftest import free_port, private_ranges
from tests.services.support import Client, NamedServer


@dataclass
class World:
    registry: AsyncRegistry
    store: ServiceStore
    catalog: ServiceCatalog

    async def apply(self, service: Service) -> Service:
        applied = (await self.store.apply(service)).service
        await self.catalog.wait_until(lambda c: c.service(*applied.key) == applied, 10)
        return applied

    async def endpoint(self, instance_id: str, address: str, port: int) -> AsyncRegistration:
        registration = await self.registry.register(
            Instance("web-pods", instance_id, address, 1, labels={"app": "web"}, ports={"http": port}))
        await self.catalog.wait_until(lambda c: instance_id in endpoint_ids(c), 10)
        return registration


def endpoint_ids(catalog: ServiceCatalog) -> set[str]:
    found = catalog.endpoints("default", "web")
    return set() if found is None else {e.instance.id for e in found.for_port("http")}


@pytest.fixture
async def world(memory_url: str) -> AsyncIterator[World]:
    async with AsyncRegistry.connect(memory_url) as registry:
        store = ServiceStore(registry.backend, private_ranges())
        catalog = ServiceCatalog(registry, store, rescan_interval=0.1)
        await catalog.start()
        try:
            yield World(registry, store, catalog)
        finally:
            await catalog.close()


def web(**changes: object) -> Service:
    return Service("web", selector={"app": "web"}, ports=(ServicePort(free_port(), "http", name="http"),)
                   ).with_changes(**changes)


async def test_endpoints_leading_back_into_the_proxy_are_refused(world: World,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    service = await world.apply(web(type=ServiceType.NODE_PORT))
    assert service.virtual_ip is not None
    port, node_port = service.ports[0].port, service.ports[0].node_port
    assert node_port is not None
    async with ServiceProxy(world.catalog) as proxy:
        await world.endpoint("itself", service.virtual_ip, port)  # the finding's reproduction
        await world.endpoint("node", "127.0.0.1", node_port)  # the proxy's node-port listener
        await world.endpoint("wildcard", "0.0.0.0", 9)  # "this host"
        reader, writer = await asyncio.open_connection(service.virtual_ip, port)
        async with asyncio.timeout(5):
            assert await reader.read() == b"", "no usable endpoint: closed at once"
        writer.close()
        stats = proxy.stats("default", "web", "http")
        assert (stats.connections, stats.no_endpoint, stats.forwarded) == (1, 1, 0), "one connection, no loop"
        reasons = {key[3]: reason for key, reason in proxy.refused_endpoints.items()}
        assert "ClusterIP range" in reasons[f"{service.virtual_ip}:{port}"]
        assert "own listening addresses" in reasons[f"127.0.0.1:{node_port}"]
        assert "unspecified" in reasons["0.0.0.0:9"]
        logged = [r.getMessage() for r in caplog.records if "refused: it" in r.getMessage()]
        assert len(logged) == 3, logged


async def test_a_loop_through_a_host_name_is_cut_at_the_first_hop(world: World) -> None:
    service = await world.apply(web(type=ServiceType.NODE_PORT))
    node_port = service.ports[0].node_port
    assert service.virtual_ip is not None and node_port is not None
    async with ServiceProxy(world.catalog) as proxy:
        await world.endpoint("by-name", "localhost", node_port)  # no address check can see this one coming
        reader, writer = await asyncio.open_connection(service.virtual_ip, service.ports[0].port)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        stats = proxy.stats("default", "web", "http")
        await eventually(lambda: asyncio.sleep(0, stats.active), lambda n: n == 0, 5)
        assert stats.loops == 1 and stats.connections == 2, "the client's connection and one looped hop"


async def test_connections_beyond_the_cap_are_closed_at_accept(world: World) -> None:
    backend = await NamedServer("pod").start()
    service = await world.apply(web())
    assert service.virtual_ip is not None
    address, port = service.virtual_ip, service.ports[0].port
    try:
        async with ServiceProxy(world.catalog, max_connections=5) as proxy:
            await world.endpoint("pod", "127.0.0.1", backend.port)
            held = [await Client.connect(address, port) for _ in range(5)]
            assert {c.greeting for c in held} == {"pod"}
            reader, writer = await asyncio.open_connection(address, port)
            async with asyncio.timeout(5):
                assert await reader.read() == b"", "over the cap: closed at once"
            writer.close()
            assert proxy.stats("default", "web", "http").rejected == 1 and proxy.open_connections == 5
            held.pop().close()
            await eventually(lambda: asyncio.sleep(0, proxy.open_connections), lambda n: n == 4, 5)
            again = await Client.connect(address, port)
            assert await again.echo("still served") == "still served"
            for client in [*held, again]:
                client.close()
    finally:
        await backend.stop()


class SilentServer:
    """Greets, then never sends or closes anything again, whatever the client does (a stuck backend)."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> SilentServer:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.append(writer)
            writer.write(b"silent\n")
            await writer.drain()
            while await reader.read(1024):
                pass  # swallow; on EOF keep our side open

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()


async def test_idle_and_half_open_connections_are_closed(world: World) -> None:
    backend = await SilentServer().start()
    service = await world.apply(web())
    assert service.virtual_ip is not None
    address, port = service.virtual_ip, service.ports[0].port
    try:
        async with ServiceProxy(world.catalog, idle_timeout=0.6, half_open_timeout=0.3) as proxy:
            await world.endpoint("silent", "127.0.0.1", backend.port)
            stats = proxy.stats("default", "web", "http")
            idle = await Client.connect(address, port)
            async with asyncio.timeout(5):
                assert await idle.reader.read() == b"", "no traffic either way: closed after the idle timeout"
            assert stats.idle_timeouts == 1

            busy = await Client.connect(address, port)
            for _ in range(6):  # traffic every 0.2 s keeps a connection open well past the idle timeout
                busy.writer.write(b"ping\n")
                await busy.writer.drain()
                await asyncio.sleep(0.2)
            assert not busy.reader.at_eof() and stats.idle_timeouts == 1
            busy.close()

            half = await Client.connect(address, port)
            half.writer.write_eof()  # we are done sending; the backend never answers nor closes
            async with asyncio.timeout(5):
                assert await half.reader.read() == b""
            assert stats.half_open_timeouts >= 1
            half.close()
    finally:
        await backend.stop()


async def test_statistics_follow_the_endpoint_set(world: World) -> None:
    servers = [await NamedServer(f"pod-{n}").start() for n in range(12)]
    service = await world.apply(web())
    assert service.virtual_ip is not None
    try:
        async with ServiceProxy(world.catalog) as proxy:
            stats = proxy.stats("default", "web", "http")
            for server in servers:  # churn: each endpoint serves one connection, then goes away
                registration = await world.endpoint(server.name, "127.0.0.1", server.port)
                client = await Client.connect(service.virtual_ip, service.ports[0].port)
                assert client.greeting == server.name
                client.close()
                await registration.deregister()
                await world.catalog.wait_until(lambda c: not endpoint_ids(c), 10)
                await proxy.settled()
            assert stats.forwarded == 12
            assert stats.per_endpoint == {}, "counters of endpoints that are gone are dropped"
    finally:
        for server in servers:
            await server.stop()
