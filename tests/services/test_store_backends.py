"""Service definitions on memory and every real backend: the seed's manifests apply, are stored durably,
resolve to endpoints, never collide with instances of a service of the same name, and are watched live."""

from __future__ import annotations

from pathlib import Path

import dns.asyncquery
import dns.message

from discovery import AsyncRegistry, Instance
from discovery.services import (
    ApplyAction,
    ServiceCatalog,
    ServicePort,
    ServiceStore,
    ServiceType,
    parse_manifests,
    read_endpoints,
)
from discovery.services.dns import DnsServer
from discovery.services.proxy import ServiceProxy
from discovery.testing import eventually
from tests.harness import free_port
from tests.services.conftest import private_ranges
from tests.services.support import NamedServer, greeting_of

MANIFESTS = Path(__file__).resolve().parents[2] / "examples" / "manifests"


def seed(name: str) -> str:
    return (MANIFESTS / f"hello-node-svc-{name}.yaml").read_text()


async def test_seed_manifests_apply_and_resolve(registry: AsyncRegistry, store: ServiceStore) -> None:
    [external] = parse_manifests(seed("externalips"), source="externalips")
    created = await store.apply(external.service)
    assert created.action is ApplyAction.CREATED
    cluster_ip = created.service.virtual_ip
    assert cluster_ip is not None and cluster_ip in [str(a) for a in store.ranges.cluster_ips]
    assert (await store.apply(external.service)).action is ApplyAction.UNCHANGED

    stored = await store.get("hello-node-svc")
    assert stored is not None and stored.external_ips == ("80.11.12.11",) and stored.selector == {"app": "hello-node"}
    assert stored.ports[0].port == 80 and stored.ports[0].target_port == 8080

    [balancer] = parse_manifests(seed("loadbalancer"), source="loadbalancer")
    configured = await store.apply(balancer.service)
    assert configured.action is ApplyAction.CONFIGURED
    service = configured.service
    assert service.type is ServiceType.LOAD_BALANCER and service.load_balancer_ip == "127.0.0.50"
    assert service.virtual_ip == cluster_ip, "the ClusterIP is kept across applies"
    assert service.ports[0].node_port in store.ranges.node_ports
    assert await store.get("hello-node-svc") == service

    await registry.register(Instance("hello-node", "hello-1", "127.0.0.1", 8080, labels={"app": "hello-node"}))
    await registry.register(Instance("hello-node", "other", "127.0.0.2", 8080, labels={"app": "other"}))
    endpoints = await read_endpoints(registry, service)
    assert [(e.instance.id, e.address, e.port) for e in endpoints.for_port("http")] == [("hello-1", "127.0.0.1", 8080)]


async def test_definitions_never_collide_with_instances(registry: AsyncRegistry, store: ServiceStore) -> None:
    [loaded] = parse_manifests(seed("externalips"))
    web = loaded.service.with_changes(name="web", selector={"app": "web"})
    await store.apply(web)
    await registry.register(Instance("web", "web-1", "127.0.0.1", 8080, labels={"app": "web"}))
    assert await registry.services() == ("web",)
    assert [i.id for i in await registry.instances("web")] == ["web-1"]
    assert [s.name for s in await store.list()] == ["web"]
    assert await store.delete("web") is True
    assert await store.delete("web") is False
    assert [i.id for i in await registry.instances("web")] == ["web-1"], "deleting the Service kept the instance"
    assert await store.list(None) == ()


async def test_definitions_are_durable_and_watched(backend_url: str) -> None:
    async with AsyncRegistry.connect(backend_url) as first:
        store = ServiceStore(first.backend, private_ranges())
        [loaded] = parse_manifests(seed("externalips"))
        applied = (await store.apply(loaded.service)).service
    async with AsyncRegistry.connect(backend_url) as second:
        store = ServiceStore(second.backend, store.ranges)
        assert await store.get("hello-node-svc") == applied, "the definition outlived the writer's connection"
        catalog = ServiceCatalog(second, store, rescan_interval=0.2)
        await catalog.start()
        try:
            assert catalog.service("default", "hello-node-svc") == applied
            other = applied.with_changes(name="second", namespace="team-b", cluster_ip=None, external_ips=())
            await store.apply(other)
            await catalog.wait_until(lambda c: c.service("team-b", "second") is not None, 10)
            await store.delete("hello-node-svc")
            await catalog.wait_until(lambda c: c.service("default", "hello-node-svc") is None, 10)
            await second.register(Instance("hello-node", "h-1", "127.0.0.1", 8080, namespace="team-b",
                                           labels={"app": "hello-node"}))
            await catalog.wait_until(lambda c: len(c.endpoints("team-b", "second") or ()) == 1, 10)
        finally:
            await catalog.close()


async def test_seed_service_served_by_proxy_and_dns(registry: AsyncRegistry, store: ServiceStore) -> None:
    [loaded] = parse_manifests(seed("externalips"))
    port = free_port()
    service = (await store.apply(loaded.service.with_changes(
        ports=(ServicePort(port, "http", name="http"),)))).service
    assert service.virtual_ip is not None
    backend = await NamedServer("hello-1").start()
    catalog = ServiceCatalog(registry, store, rescan_interval=0.2)
    await catalog.start()
    proxy = ServiceProxy(catalog)
    dns_server = DnsServer(catalog, port=0)
    try:
        await proxy.start()
        await dns_server.start()
        registration = await registry.register(Instance("hello-node", "hello-1", "127.0.0.1", 1,
                                                        labels={"app": "hello-node"}, ports={"http": backend.port}))
        await catalog.wait_until(lambda c: len(c.endpoints("default", "hello-node-svc") or ()) == 1, 15)
        assert await greeting_of(service.virtual_ip, port) == "hello-1"

        async def srv() -> list[str]:
            query = dns.message.make_query("_http._tcp.hello-node-svc.default.svc.cluster.local", "SRV")
            response = await dns.asyncquery.udp(query, "127.0.0.1", port=dns_server.port, timeout=3)
            return [r.to_text() for rrset in response.answer for r in rrset]

        assert await srv() == [f"0 1 {backend.port} hello-1.hello-node-svc.default.svc.cluster.local."]
        await registration.deregister()
        await eventually(srv, lambda records: records == [], 15)
        assert await greeting_of(service.virtual_ip, port) == "", "no endpoint: closed at once"
        assert proxy.stats("default", "hello-node-svc", "http").no_endpoint == 1
    finally:
        await dns_server.close()
        await proxy.close()
        await catalog.close()
        await backend.stop()
