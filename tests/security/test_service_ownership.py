"""Finding 1 (the Kubernetes CVE-2020-8554 pattern): one Service must never take another's traffic.

The attack: a tenant applies ``alpha/evil`` whose ``externalIPs`` names the ClusterIP of ``default/api`` on api's
port. Before the fix the store accepted it and the proxy served whichever Service sorted first (``alpha/evil``),
so api's listener disappeared without a word. A requested ClusterIP was not checked against the range either
(``0.0.0.0`` would make the proxy bind every interface). Now: refused at apply with both names, nothing
written; a definition written around the store is arbitrated by the proxy (the owner keeps its address) and
reported.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from discovery import AsyncRegistry, Instance, ValidationError
from discovery.services import AllocationRanges, Service, ServiceCatalog, ServicePort, ServiceStore, encode_service
from discovery.services.proxy import ListenerKind, ServiceProxy
from discovery.services.store import ServiceConflictError
from discovery.testing.conformance import definitions_of
from tests.services.conftest import free_port, private_ranges
from tests.services.support import NamedServer, greeting_of


def api(port: int, **changes: object) -> Service:
    return Service("api", selector={"app": "api"}, ports=(ServicePort(port, "http", name="http"),)).with_changes(
        **changes)


def evil(port: int, **changes: object) -> Service:
    return Service("evil", "alpha", selector={"app": "evil"},
                   ports=(ServicePort(port, "http", name="http"),)).with_changes(**changes)


@pytest.fixture
async def store(memory_url: str) -> AsyncIterator[ServiceStore]:
    async with AsyncRegistry.connect(memory_url) as registry:
        yield ServiceStore(registry.backend, private_ranges())


async def test_external_ip_on_another_services_cluster_ip_is_refused_naming_both(store: ServiceStore) -> None:
    applied = (await store.apply(api(8080))).service
    assert applied.virtual_ip is not None
    for port in (8080, 9999):  # a ClusterIP is owned whole, not only on the owner's ports
        with pytest.raises(ServiceConflictError) as refused:
            await store.apply(evil(port, external_ips=(applied.virtual_ip,)))
        message = str(refused.value)
        assert refused.value.field == "spec.externalIPs[0]"
        assert '"default/api"' in message and '"alpha/evil"' in message and applied.virtual_ip in message
    with pytest.raises(ServiceConflictError, match="default/api"):
        await store.apply(evil(8080, type="LoadBalancer", load_balancer_ip=applied.virtual_ip))
    assert await store.get("evil", "alpha") is None, "nothing was written"


async def test_an_external_address_and_port_belongs_to_the_first_claimant(store: ServiceStore) -> None:
    await store.apply(api(80, external_ips=("80.11.12.11",)))
    with pytest.raises(ServiceConflictError, match=r'80\.11\.12\.11:80 is already served by Service "default/api"'):
        await store.apply(evil(80, external_ips=("80.11.12.11",)))
    shared = await store.apply(evil(81, external_ips=("80.11.12.11",)))  # another port of the address is free
    assert shared.service.external_ips == ("80.11.12.11",)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cluster_ip": "0.0.0.0"}, "spec.clusterIP"),
        ({"cluster_ip": "::"}, "spec.clusterIP"),
        ({"cluster_ip": "224.0.0.1"}, "spec.clusterIP"),
        ({"cluster_ip": "169.254.169.254"}, "spec.clusterIP"),
        ({"cluster_ip": "255.255.255.255"}, "spec.clusterIP"),
        ({"external_ips": ("0.0.0.0",)}, "spec.externalIPs[0]"),
        ({"external_ips": ("fe80::1",)}, "spec.externalIPs[0]"),
        ({"external_ips": ("::ffff:127.0.0.1",)}, "spec.externalIPs[0]"),
        ({"type": "LoadBalancer", "load_balancer_ip": "0.0.0.0"}, "spec.loadBalancerIP"),
        ({"type": "LoadBalancer", "load_balancer_ip": "239.1.1.1"}, "spec.loadBalancerIP"),
    ],
)
def test_unspecified_multicast_broadcast_and_link_local_addresses_are_refused(changes: dict[str, object],
                                                                               field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        api(80, **changes)
    assert refused.value.field == field


async def test_a_requested_cluster_ip_must_lie_in_the_range(store: ServiceStore) -> None:
    outside = "8.8.8.8"
    with pytest.raises(ValidationError, match=r"spec\.clusterIP: 8\.8\.8\.8 is outside the cluster IP range"):
        await store.apply(api(80, cluster_ip=outside))
    network = store.ranges.cluster_ips
    with pytest.raises(ValidationError, match="reserved"):
        await store.apply(api(80, cluster_ip=str(network.network_address)))
    inside = str(list(network.hosts())[3])
    assert (await store.apply(api(80, cluster_ip=inside))).service.virtual_ip == inside
    assert await store.get("evil", "alpha") is None


async def test_allocation_never_hands_out_an_address_another_service_claims(memory_url: str) -> None:
    async with AsyncRegistry.connect(memory_url) as registry:
        port = free_port()
        subnet = private_ranges().cluster_ips.network_address.packed[:3]
        network = f"{'.'.join(map(str, subnet))}.0/30"  # two host addresses: .1 and .2
        store = ServiceStore(registry.backend, AllocationRanges.from_text(network, f"{port}-{port}"))
        first, second = (str(a) for a in store.ranges.cluster_ips.hosts())
        await store.apply(api(80, cluster_ip=second, external_ips=(first,)))
        with pytest.raises(ValidationError, match="no free address left"):
            await store.apply(evil(80))


@dataclass
class World:
    registry: AsyncRegistry
    store: ServiceStore
    catalog: ServiceCatalog


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


async def test_a_hijacking_definition_written_around_the_store_takes_no_traffic(world: World) -> None:
    port = free_port()
    api_backend, evil_backend = await NamedServer("api-pod").start(), await NamedServer("evil-pod").start()
    proxy = ServiceProxy(world.catalog)
    try:
        served = (await world.store.apply(api(port))).service
        assert served.virtual_ip is not None
        await world.registry.register(Instance("api", "a-1", "127.0.0.1", 1, labels={"app": "api"},
                                               ports={"http": api_backend.port}))
        await world.registry.register(Instance("evil", "e-1", "127.0.0.1", 1, namespace="alpha",
                                               labels={"app": "evil"}, ports={"http": evil_backend.port}))
        await world.catalog.wait_until(lambda c: len(c.endpoints("default", "api") or ()) == 1, 10)
        await proxy.start()
        assert await greeting_of(served.virtual_ip, port) == "api-pod"

        # The tenant writes its definition straight into the backend, so no apply-time check runs.
        hijack = evil(port, external_ips=(served.virtual_ip,))
        await definitions_of(world.registry).put("services", "alpha", "evil", encode_service(hijack))
        await world.catalog.wait_until(lambda c: c.service("alpha", "evil") is not None, 10)
        await world.catalog.wait_until(lambda c: len(c.endpoints("alpha", "evil") or ()) == 1, 10)
        await proxy.settled()
        assert [await greeting_of(served.virtual_ip, port) for _ in range(3)] == ["api-pod"] * 3
        [(claim, reason)] = proxy.conflicts.items()
        assert (claim.namespace, claim.service, claim.kind) == ("alpha", "evil", ListenerKind.EXTERNAL_IP)
        assert "default/api" in reason and "alpha/evil" in reason

        # A proxy starting with both definitions present serves the owner too (allocated beats claimed).
        await proxy.close()
        proxy = ServiceProxy(world.catalog)
        await proxy.start()
        assert await greeting_of(served.virtual_ip, port) == "api-pod"
        assert {(s.namespace, s.service) for s in proxy.conflicts} == {("alpha", "evil")}
        assert [(s.namespace, s.service, s.kind) for s in proxy.listeners] == [
            ("default", "api", ListenerKind.CLUSTER_IP)]
    finally:
        await proxy.close()
        await api_backend.stop()
        await evil_backend.stop()


async def test_two_claims_of_an_external_address_serve_nobody_and_are_reported(world: World) -> None:
    port = free_port()
    address = str(list(world.store.ranges.cluster_ips.hosts())[-1])  # a local address no Service was given
    one = api(port, external_ips=(address,))
    other = evil(port, external_ips=(address,))
    for service in (one, other):  # both written around the store, then a proxy starts
        await definitions_of(world.registry).put("services", service.namespace, service.name,
                                                    encode_service(service))
    await world.catalog.wait_until(lambda c: len(c.services) == 2, 10)
    proxy = ServiceProxy(world.catalog)
    try:
        await proxy.start()
        assert not [s for s in proxy.listeners if s.address == address], "a tie serves nobody"
        assert {(s.namespace, s.service) for s in proxy.conflicts} == {("default", "api"), ("alpha", "evil")}
        assert all("nobody is served" in reason for reason in proxy.conflicts.values())
    finally:
        await proxy.close()
