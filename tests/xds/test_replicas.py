"""Two control planes over the same backend serve identical resources (so a client may be pointed at
either), and gRPC's client works through each."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from discovery import AsyncRegistry, Instance
from discovery.services import Service, ServicePort, ServiceStore
from discovery.xds import XdsServer
from tests.harness import ServerHandle
from tests.xds.support import TYPES, EchoServer, RawAdsStream, XdsClientProcess, client_bootstrap, unpack

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]

NAMES = {
    "LDS": ["orders", "shop.default.svc.cluster.local:80"],
    "RDS": ["orders", "shop.default.svc.cluster.local:80"],
    "CDS": ["orders.default", "shop.default.svc.cluster.local:80"],
    "EDS": ["orders.default", "shop.default.svc.cluster.local:80"],
}


async def resources_of(server: XdsServer) -> dict[str, list[bytes]]:
    stream = RawAdsStream(server.address)
    found: dict[str, list[bytes]] = {}
    for kind, names in NAMES.items():
        stream.send(kind, names)
        by_name: dict[str, bytes] = {}
        while len(by_name) < len(names):  # endpoint replies may come one assignment at a time
            reply = await stream.receive(30)
            assert reply.type_url == TYPES[kind]
            for message in unpack(reply):
                by_name[message.cluster_name if kind == "EDS" else message.name] = message.SerializeToString(
                    deterministic=True)
            stream.send(kind, names, version=reply.version_info, nonce=reply.nonce)
        found[kind] = [by_name[n] for n in sorted(by_name)]
    await stream.close()
    return found


async def test_two_replicas_serve_identical_resources(etcd_server: ServerHandle,
                                                      echo_servers: Callable[..., list[EchoServer]],
                                                      xds_clients: Callable[..., XdsClientProcess]) -> None:
    url = f"{etcd_server.url}/xds-{uuid.uuid4().hex[:8]}?ttl=5"
    servers = echo_servers(2)
    async with AsyncRegistry.connect(url) as writer:
        await ServiceStore(writer.backend).apply(
            Service("shop", "default", selector={"app": "shop"}, ports=(ServicePort(80, "grpc", name="grpc"),)))
        for s in servers:
            await writer.register(Instance("orders", s.name, "127.0.0.1", s.port, labels={"app": "shop"},
                                           ports={"grpc": s.port}, zone="z1"))
        async with AsyncRegistry.connect(url) as first_registry, AsyncRegistry.connect(url) as second_registry, \
                XdsServer(first_registry, rescan_interval=0.2) as first, \
                XdsServer(second_registry, rescan_interval=0.2) as second:
            assert await resources_of(first) == await resources_of(second)
            for replica in (first, second):
                client = xds_clients(client_bootstrap(replica.address))
                for target in ("xds:///orders", "xds:///shop.default.svc.cluster.local:80"):
                    result = await client.call(target, 20)
                    assert set(result["counts"]) == {s.name for s in servers}, (replica.address, target, result)
