"""The L4 proxy end to end with real local TCP servers: round-robin balancing, endpoint churn during traffic
(open connections drain, new ones follow), no endpoints (immediate close, counted), node ports and
load-balancer / external IPs."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from discovery import AsyncRegistry, Instance, Status
from discovery.services import Service, ServiceCatalog, ServicePort, ServiceStore, ServiceType
from discovery.services.proxy import ListenerKind, ServiceProxy
from discovery.testing import eventually
from tests.harness import free_port
from tests.services.conftest import apply_and_wait, running_catalog
from tests.services.support import Client, NamedServer, greeting_of


@dataclass
class World:
    registry: AsyncRegistry
    store: ServiceStore
    catalog: ServiceCatalog
    proxy: ServiceProxy

    async def apply(self, service: Service) -> Service:
        applied = await apply_and_wait(self.store, self.catalog, service)
        await self.proxy.settled()
        return applied

    async def endpoint_count(self, service: Service, count: int) -> None:
        await self.catalog.wait_until(lambda c: len(c.endpoints(*service.key) or ()) == count, 10)


@pytest.fixture
async def world(memory_url: str) -> AsyncIterator[World]:
    async with running_catalog(memory_url) as (registry, store, catalog):
        proxy = ServiceProxy(catalog)
        await proxy.start()
        try:
            yield World(registry, store, catalog, proxy)
        finally:
            await proxy.close()


@pytest.fixture
async def servers() -> AsyncIterator[list[NamedServer]]:
    started = [await NamedServer(f"server-{n}").start() for n in range(3)]
    yield started
    for server in started:
        await server.stop()


def web_service(**changes: object) -> Service:
    base = Service("web", selector={"app": "web"}, ports=(ServicePort(free_port(), "http", name="http"),))
    return base.with_changes(**changes)


def instance(server: NamedServer, **changes: object) -> Instance:
    return Instance("web-backend", server.name, "127.0.0.1", 1, labels={"app": "web"}, ports={"http": server.port},
                    **changes)  # type: ignore[arg-type]


async def test_round_robin_over_every_endpoint(world: World, servers: list[NamedServer]) -> None:
    service = await world.apply(web_service())
    for server in servers:
        await world.registry.register(instance(server))
    await world.endpoint_count(service, 3)
    assert service.virtual_ip is not None
    greetings = [await greeting_of(service.virtual_ip, service.ports[0].port) for _ in range(6)]
    assert Counter(greetings) == {"server-0": 2, "server-1": 2, "server-2": 2}
    stats = world.proxy.stats("default", "web", "http")
    assert (stats.connections, stats.forwarded, stats.errors) == (6, 6, 0)


async def test_churn_during_traffic_drains_old_and_follows_new(world: World, servers: list[NamedServer]) -> None:
    old, new, _ = servers
    service = await world.apply(web_service())
    assert service.virtual_ip is not None
    address, port = service.virtual_ip, service.ports[0].port
    old_registration = await world.registry.register(instance(old))
    await world.endpoint_count(service, 1)

    long_lived = await Client.connect(address, port)
    assert long_lived.greeting == "server-0"
    greetings: list[str] = []
    after_switch: list[str] = []
    switched = False
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            started_after_switch = switched
            client = await Client.connect(address, port)
            assert await client.echo("ping") == "ping"
            (after_switch if started_after_switch else greetings).append(client.greeting)
            client.close()

    runner = asyncio.create_task(traffic())
    await eventually(lambda: asyncio.sleep(0, len(greetings)), lambda n: n >= 5, 10)
    await world.registry.register(instance(new))
    await old_registration.update(status=Status.DRAINING)
    await world.catalog.wait_until(
        lambda c: [e.instance.id for e in (c.endpoints("default", "web") or ())
                   .for_port("http")] == ["server-1"], 10)
    switched = True
    await eventually(lambda: asyncio.sleep(0, len(after_switch)), lambda n: n >= 5, 10)
    stop.set()
    await runner

    assert set(greetings[:5]) == {"server-0"}
    assert set(after_switch) == {"server-1"}, "new connections go to the new endpoint set only"
    assert await long_lived.echo("still here") == "still here", "the open connection drained on its endpoint"
    long_lived.close()
    assert world.proxy.stats("default", "web", "http").errors == 0


async def test_no_endpoint_closes_at_once_and_counts(world: World) -> None:
    service = await world.apply(web_service(selector={"app": "nobody"}))
    assert service.virtual_ip is not None
    async with asyncio.timeout(2):
        reader, writer = await asyncio.open_connection(service.virtual_ip, service.ports[0].port)
        assert await reader.read() == b"", "the proxy closed the connection at once"
    writer.close()
    stats = world.proxy.stats("default", "web", "http")
    assert (stats.no_endpoint, stats.errors, stats.forwarded) == (1, 1, 0)


async def test_dead_endpoint_is_skipped_and_all_dead_is_an_error(world: World, servers: list[NamedServer]) -> None:
    service = await world.apply(web_service())
    assert service.virtual_ip is not None
    dead = NamedServer("dead")
    dead.port = free_port()  # nobody listens there
    await world.registry.register(instance(dead))
    await world.endpoint_count(service, 1)
    reader, writer = await asyncio.open_connection(service.virtual_ip, service.ports[0].port)
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    stats = world.proxy.stats("default", "web", "http")
    assert (stats.unreachable, stats.connect_failures) == (1, 1)

    await world.registry.register(instance(servers[0]))
    await world.endpoint_count(service, 2)
    greetings = {await greeting_of(service.virtual_ip, service.ports[0].port) for _ in range(4)}
    assert greetings == {"server-0"}, "a refused endpoint is skipped for the next one"


async def test_node_port_load_balancer_ip_and_external_ips(world: World, servers: list[NamedServer]) -> None:
    node_port = next(iter(world.store.ranges.node_ports))
    lb_ip = str(list(world.store.ranges.cluster_ips.hosts())[-1])
    service = await world.apply(web_service(type=ServiceType.LOAD_BALANCER, load_balancer_ip=lb_ip,
                                            external_ips=("80.11.12.11",)))
    assert service.ports[0].node_port == node_port
    await world.registry.register(instance(servers[0]))
    await world.endpoint_count(service, 1)
    kinds = {spec.kind for spec in world.proxy.listeners}
    assert kinds == {ListenerKind.CLUSTER_IP, ListenerKind.NODE_PORT, ListenerKind.LOAD_BALANCER_IP}
    assert await greeting_of("127.0.0.1", node_port) == "server-0"
    assert await greeting_of(lb_ip, service.ports[0].port) == "server-0"
    [(failed, reason)] = world.proxy.failures.items()
    assert failed.kind is ListenerKind.EXTERNAL_IP and "80.11.12.11" in reason

    await world.store.delete("web")
    await world.catalog.wait_until(lambda c: not c.services, 10)
    await world.proxy.settled()
    assert world.proxy.listeners == () and world.proxy.failures == {}
    with pytest.raises(OSError):
        await greeting_of("127.0.0.1", node_port)
