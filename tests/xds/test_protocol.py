"""The ADS rules a real client depends on, each checked on a hand-driven stream (and, where the issue names a
client-visible effect, with gRPC's own client): the first request of each type is always answered, versions
are unique across restarts, stale nonces are ignored, a NACK is logged and never resent, nothing is answered
for a Listener/Cluster or an endpoint assignment before its source has been read once, an outage keeps the
last endpoints, and a restarted control plane converges every client.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import pytest

from discovery import AsyncRegistry, Instance
from discovery.services import Service, ServicePort, ServiceStore
from discovery.xds import XdsServer
from tests.harness import ServerHandle
from tests.xds.conftest import REAL_BACKENDS, isolated_url
from tests.xds.support import (
    EchoServer,
    RawAdsStream,
    XdsClientProcess,
    client_bootstrap,
    endpoint_ports,
    unpack,
    unpack_names,
)

pytestmark = pytest.mark.timeout(120)


async def test_first_request_answered_whatever_version_it_reports(memory_registry: AsyncRegistry) -> None:
    async with XdsServer(memory_registry) as server:
        first = RawAdsStream(server.address)
        first.send("LDS", ["orders"])
        reply = await first.receive()
        assert unpack_names(reply) == ["orders"]
        # A client reconnecting reports the version it has; it must be answered all the same.
        second = RawAdsStream(server.address)
        second.send("LDS", ["orders"], version=reply.version_info)
        again = await second.receive()
        assert unpack_names(again) == ["orders"]
        assert again.version_info != reply.version_info
        for kind, name in (("RDS", "orders"), ("CDS", "orders.default")):
            second.send(kind, [name], version=reply.version_info)
            assert unpack_names(await second.receive()) == [name]
        await first.close()
        await second.close()


async def test_versions_are_unique_across_restarts_and_replicas(memory_registry: AsyncRegistry) -> None:
    versions = set()
    port = 0
    for _ in range(3):
        async with XdsServer(memory_registry, port=port) as server:
            port = server.port
            stream = RawAdsStream(server.address)
            stream.send("CDS", ["orders"])
            versions.add((await stream.receive()).version_info)
            await stream.close()
    assert len(versions) == 3


async def test_ack_recorded_and_stale_nonce_ignored(memory_registry: AsyncRegistry) -> None:
    await memory_registry.register(Instance("orders", "a", "127.0.0.1", 7001))
    async with XdsServer(memory_registry) as server:
        stream = RawAdsStream(server.address)
        stream.send("EDS", ["orders.default"])
        first = await stream.receive()
        stream.send("EDS", ["orders.default"], version=first.version_info, nonce=first.nonce)
        await memory_registry.register(Instance("orders", "b", "127.0.0.1", 7002))
        second = await stream.receive()
        assert endpoint_ports(unpack(second)[0]) == [7001, 7002]
        # a request about the first reply (stale nonce) changing the subscription is ignored
        stream.send("EDS", ["orders.default", "other.default"], version=first.version_info, nonce=first.nonce)
        await stream.nothing_for(0.5)
        stream.send("EDS", ["orders.default"], version=second.version_info, nonce=second.nonce)
        await stream.nothing_for(0.3)
        (info,) = server.streams
        assert info.acked["EDS"] == second.version_info
        assert info.subscribed["EDS"] == frozenset({"orders.default"})
        await stream.close()


async def test_nack_is_logged_and_not_resent(memory_registry: AsyncRegistry, caplog: pytest.LogCaptureFixture,
                                             echo_servers: Callable[..., list[EchoServer]],
                                             xds_clients: Callable[..., XdsClientProcess]) -> None:
    """gRPC rejects a MAGLEV Cluster (Envoy accepts it): the NACK is logged with the client's node id and
    error, and the same content is not sent again."""
    (echo,) = echo_servers(1)
    await memory_registry.register(Instance("orders", echo.name, "127.0.0.1", echo.port))
    caplog.set_level(logging.WARNING, logger="discovery.xds")
    async with XdsServer(memory_registry, lb_policy="maglev") as server:
        bootstrap = client_bootstrap(server.address)
        client = xds_clients(bootstrap)
        result = await client.call("xds:///orders", 1, timeout=3.0)
        assert result["counts"] == {}
        node_id = bootstrap["node"]["id"]  # type: ignore[index]
        deadline = time.monotonic() + 10
        while not any(s.nacks.get("CDS") for s in server.streams):
            assert time.monotonic() < deadline, "no NACK seen"
            await asyncio.sleep(0.02)
        (info,) = server.streams
        ((version, message),) = info.nacks["CDS"]
        assert message
        assert info.responses["CDS"] == 1
        await asyncio.sleep(1.0)  # a resend loop would show within this second
        (info,) = server.streams
        assert info.responses["CDS"] == 1 and len(info.nacks["CDS"]) == 1
        logged = [r.getMessage() for r in caplog.records if "rejected CDS" in r.getMessage()]
        assert len(logged) == 1 and node_id in logged[0] and version in logged[0] and message[:40] in logged[0]

    # The raw form: a NACKed version is not sent again, whatever comes after.
    async with XdsServer(memory_registry) as server:
        stream = RawAdsStream(server.address)
        stream.send("CDS", ["orders"])
        reply = await stream.receive()
        stream.send("CDS", ["orders"], nonce=reply.nonce, error="rejected by the test")
        await stream.nothing_for(0.5)
        await stream.close()


@pytest.mark.servers
async def test_nothing_answered_before_the_first_read(fresh_server: Callable[[str], ServerHandle]) -> None:
    """With the backend down, a Listener set holding a Service target and an endpoint assignment of a service
    never read stay unanswered (an answer leaving the Service listener out would delete it on the client; an
    empty assignment would fail every RPC); once the backend is back, both are answered in full."""
    etcd = fresh_server("etcd")
    url = f"{etcd.url}/xds-{uuid.uuid4().hex[:8]}?ttl=5"
    async with AsyncRegistry.connect(url) as registry:
        await ServiceStore(registry.backend).apply(
            Service("shop", "default", selector={"app": "shop"}, ports=(ServicePort(80, 8080),)))
        await registry.register(Instance("orders", "a", "127.0.0.1", 7001))
        async with XdsServer(registry) as server:
            etcd.stop()
            stream = RawAdsStream(server.address)
            stream.send("LDS", ["orders", "shop.default.svc.cluster.local:80"])
            stream.send("EDS", ["orders.default"])
            await stream.nothing_for(2.0)
            await asyncio.to_thread(etcd.start)
            replies = {}
            while len(replies) < 2:
                reply = await stream.receive(30)
                replies[reply.type_url.rsplit(".", 1)[-1]] = reply
            assert sorted(unpack_names(replies["Listener"])) == ["orders", "shop.default.svc.cluster.local:80"]
            assert endpoint_ports(unpack(replies["ClusterLoadAssignment"])[0]) == [7001]
            await stream.close()


@pytest.mark.servers
@pytest.mark.parametrize("kind", REAL_BACKENDS)
async def test_outage_keeps_serving_the_last_endpoints(kind: str, fresh_server: Callable[[str], ServerHandle],
                                                       echo_servers: Callable[..., list[EchoServer]],
                                                       xds_clients: Callable[..., XdsClientProcess]) -> None:
    """The backend stopped for longer than the TTL / session timeout: clients keep calling every server, and a
    client that starts during the outage gets the same endpoints (stale, never an empty set)."""
    etcd = fresh_server(kind)
    tag = f"xds-{uuid.uuid4().hex[:8]}"
    url = f"{etcd.url}/{tag}?ttl=2" if kind == "etcd" else f"{etcd.url}/{tag}?session_timeout=2"
    servers = echo_servers(3)
    names = {s.name for s in servers}
    async with AsyncRegistry.connect(url) as registry:
        for s in servers:
            await registry.register(Instance("orders", s.name, "127.0.0.1", s.port))
        async with XdsServer(registry) as server:
            client = xds_clients(client_bootstrap(server.address))
            await client.start("xds:///orders")
            await client.wait_for_servers("xds:///orders", names)
            etcd.stop()
            stopped = time.monotonic()
            await asyncio.sleep(4.0)
            during = await client.stats("xds:///orders", stopped)
            assert set(during["servers"]) == names and during["errors"][0] == 0
            latecomer = xds_clients(client_bootstrap(server.address))
            result = await latecomer.call("xds:///orders", 30)
            assert result["errors"] == {} and set(result["counts"]) == names
            await asyncio.to_thread(etcd.start)
            back = time.monotonic()
            await asyncio.sleep(3.0)
            after = await client.stats("xds:///orders", back)
            assert set(after["servers"]) == names and after["errors"][0] == 0


@pytest.mark.parametrize("kind", ["memory", *REAL_BACKENDS])
async def test_control_plane_restart_converges_every_client(kind: str, request: pytest.FixtureRequest,
                                                            echo_servers: Callable[..., list[EchoServer]],
                                                            xds_clients: Callable[..., XdsClientProcess]) -> None:
    """Clients of a control plane that stops, while the registry changes, converge on its restart (same
    port): the removed instance is no longer called and the added one is."""
    if kind != "memory":
        request.applymarker(pytest.mark.servers)
    url = isolated_url(kind, request)
    s0, s1, s2 = echo_servers(3)
    async with AsyncRegistry.connect(url) as registry:
        registrations = {}
        for s in (s0, s1):
            registrations[s.name] = await registry.register(Instance("orders", s.name, "127.0.0.1", s.port))
        async with XdsServer(registry) as first:
            port = first.port
            clients = [xds_clients(client_bootstrap(first.address)) for _ in range(2)]
            for client in clients:
                await client.start("xds:///orders")
            for client in clients:
                await client.wait_for_servers("xds:///orders", [s0.name, s1.name])
        await registrations[s0.name].deregister()
        await registry.register(Instance("orders", s2.name, "127.0.0.1", s2.port))
        async with XdsServer(registry, port=port) as second:
            assert second.boot_id != first.boot_id
            for client in clients:
                converged = await client.wait_for_servers("xds:///orders", [s1.name, s2.name], timeout=30)
                await asyncio.sleep(0.3)
                late = await client.stats("xds:///orders", converged)
                assert s0.name not in late["servers"]
