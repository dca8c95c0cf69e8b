"""The cluster.local responder, queried with dnspython over UDP and TCP while instances come and go."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from discovery import AsyncRegistry, Instance
from discovery.services import HEADLESS, Service, ServiceCatalog, ServicePort, ServiceStore, ServiceType
from discovery.services.dns import DnsServer
from discovery.testing import eventually
from tests.services.conftest import apply_and_wait, running_catalog


@dataclass
class Dns:
    registry: AsyncRegistry
    store: ServiceStore
    catalog: ServiceCatalog
    server: DnsServer

    async def query(self, name: str, rdtype: str, *, tcp: bool = False) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype)
        send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
        return await send(query, "127.0.0.1", port=self.server.port, timeout=3)

    async def answers(self, name: str, rdtype: str) -> list[str]:
        response = await self.query(name, rdtype)
        return sorted(r.to_text() for rrset in response.answer for r in rrset)

    async def until(self, name: str, rdtype: str, accept: Callable[[list[str]], bool]) -> list[str]:
        return await eventually(lambda: self.answers(name, rdtype), accept, 10)

    async def apply(self, service: Service) -> Service:
        return await apply_and_wait(self.store, self.catalog, service)


@pytest.fixture
async def cluster_dns(memory_url: str) -> AsyncIterator[Dns]:
    async with running_catalog(memory_url) as (registry, store, catalog):
        server = DnsServer(catalog, port=0)
        await server.start()
        try:
            yield Dns(registry, store, catalog, server)
        finally:
            await server.close()


def web(**changes: object) -> Service:
    service = Service("web", "shop", selector={"app": "web"},
                      ports=(ServicePort(80, "http", name="http"), ServicePort(9100, 9100, name="metrics")))
    return service.with_changes(**changes)


def backend(n: int, **changes: object) -> Instance:
    return Instance("web-pods", f"web-{n}", f"127.0.1.{n}", 8000 + n, namespace="shop", labels={"app": "web"},
                    ports={"http": 8000 + n}, **changes)  # type: ignore[arg-type]


async def test_a_record_is_the_cluster_ip(cluster_dns: Dns) -> None:
    service = await cluster_dns.apply(web())
    assert await cluster_dns.answers("web.shop.svc.cluster.local", "A") == [service.virtual_ip]
    over_tcp = await cluster_dns.query("web.shop.svc.cluster.local", "A", tcp=True)
    assert [r.to_text() for rrset in over_tcp.answer for r in rrset] == [service.virtual_ip]
    assert over_tcp.flags & dns.flags.AA


async def test_srv_follows_instances(cluster_dns: Dns) -> None:
    await cluster_dns.apply(web())
    name = "_http._tcp.web.shop.svc.cluster.local"
    assert await cluster_dns.answers(name, "SRV") == []
    first = await cluster_dns.registry.register(backend(1))
    await cluster_dns.registry.register(backend(2, weight=5))
    records = await cluster_dns.until(name, "SRV", lambda rs: len(rs) == 2)
    assert records == ["0 1 8001 web-1.web.shop.svc.cluster.local.", "0 5 8002 web-2.web.shop.svc.cluster.local."]
    response = await cluster_dns.query(name, "SRV")
    glue = sorted(r.to_text() for rrset in response.additional for r in rrset)
    assert glue == ["127.0.1.1", "127.0.1.2"]
    assert await cluster_dns.answers("web-2.web.shop.svc.cluster.local", "A") == ["127.0.1.2"]
    by_number = await cluster_dns.answers("_9100._tcp.web.shop.svc.cluster.local", "SRV")
    assert by_number == ["0 1 9100 web-1.web.shop.svc.cluster.local.", "0 5 9100 web-2.web.shop.svc.cluster.local."]

    await first.deregister()
    assert await cluster_dns.until(name, "SRV", lambda rs: len(rs) == 1) == [
        "0 5 8002 web-2.web.shop.svc.cluster.local."
    ]
    gone = await cluster_dns.query("web-1.web.shop.svc.cluster.local", "A")
    assert gone.rcode() == dns.rcode.NXDOMAIN


async def test_headless_answers_every_endpoint(cluster_dns: Dns) -> None:
    await cluster_dns.apply(web(cluster_ip=HEADLESS))
    await cluster_dns.registry.register(backend(1))
    assert await cluster_dns.until("web.shop.svc.cluster.local", "A", lambda rs: len(rs) == 1) == ["127.0.1.1"]
    three = await cluster_dns.registry.register(backend(3))
    assert await cluster_dns.until("web.shop.svc.cluster.local", "A", lambda rs: len(rs) == 2) == [
        "127.0.1.1", "127.0.1.3"
    ]
    await three.deregister()
    assert await cluster_dns.until("web.shop.svc.cluster.local", "A", lambda rs: len(rs) == 1) == ["127.0.1.1"]


async def test_external_name_is_a_cname(cluster_dns: Dns) -> None:
    await cluster_dns.apply(Service("db", "shop", type=ServiceType.EXTERNAL_NAME, external_name="db.example.com"))
    response = await cluster_dns.query("db.shop.svc.cluster.local", "A")
    [rrset] = response.answer
    assert rrset.rdtype == dns.rdatatype.CNAME and [r.to_text() for r in rrset] == ["db.example.com."]


async def test_unknown_names_and_other_zones(cluster_dns: Dns) -> None:
    await cluster_dns.apply(web())
    for unknown in ("nope.shop.svc.cluster.local", "web.other.svc.cluster.local",
                    "_grpc._tcp.web.shop.svc.cluster.local"):
        response = await cluster_dns.query(unknown, "A" if not unknown.startswith("_") else "SRV")
        assert response.rcode() == dns.rcode.NXDOMAIN, unknown
        assert response.authority and response.authority[0].rdtype == dns.rdatatype.SOA
    no_data = await cluster_dns.query("web.shop.svc.cluster.local", "TXT")
    assert no_data.rcode() == dns.rcode.NOERROR and not no_data.answer
    outside = await cluster_dns.query("example.com", "A")
    assert outside.rcode() == dns.rcode.REFUSED
    await cluster_dns.store.delete("web", "shop")
    await cluster_dns.catalog.wait_until(lambda c: not c.services, 10)
    gone = await cluster_dns.query("web.shop.svc.cluster.local", "A")
    assert gone.rcode() == dns.rcode.NXDOMAIN
    assert cluster_dns.server.stats.nxdomain == 4 and cluster_dns.server.stats.refused == 1
