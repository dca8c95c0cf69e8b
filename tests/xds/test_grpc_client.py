"""gRPC's own ``xds:///`` client, in another process, through our xDS server, against real backends.

Memory runs every case fast; etcd and ZooKeeper run the issue's cases against real servers. Each client
calls in a loop and records (CLOCK_MONOTONIC, which server answered); the test compares those times with the
moment the registry changed or the server's registry watch saw the change.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from discovery import AsyncRegistry, Instance, Snapshot, Status
from discovery.services import Service, ServicePort, ServiceStore
from discovery.xds import XdsServer
from tests.xds.conftest import REAL_BACKENDS, isolated_url
from tests.xds.support import PROPAGATION_BOUND, REPO, EchoServer, XdsClientProcess, client_bootstrap

pytestmark = pytest.mark.timeout(120)

TTL = 2.0


@dataclass
class WatchTimes:
    """When the xDS server's registry watch first saw each instance UP, and saw it leave UP."""

    up: dict[str, float] = field(default_factory=dict)
    gone: dict[str, float] = field(default_factory=dict)
    _current: set[str] = field(default_factory=set)

    def __call__(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        current = {i.id for i in snapshot.instances if i.status is Status.UP}
        for new in current - self._current:
            self.up.setdefault(new, now)
        for old in self._current - current:
            self.gone[old] = now
        self._current = current


@dataclass
class Setup:
    """An xDS server over one backend, a separate registrant connection, and what the server's watch saw."""

    server: XdsServer
    registry: AsyncRegistry
    registrant: AsyncRegistry
    url: str
    times: WatchTimes

    @property
    def bootstrap(self) -> dict[str, object]:
        return client_bootstrap(self.server.address)


@pytest.fixture(params=["memory", *REAL_BACKENDS])
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    if request.param != "memory":
        request.applymarker(pytest.mark.servers)
    url = isolated_url(str(request.param), request, TTL)
    async with AsyncRegistry.connect(url) as registry, AsyncRegistry.connect(url) as registrant:
        times = WatchTimes()
        unsubscribe = registry.subscribe("orders", times)  # shares the watch the xDS server uses
        async with XdsServer(registry, rescan_interval=0.2) as server:
            yield Setup(server, registry, registrant, url, times)
        await unsubscribe()


async def register_all(registrant: AsyncRegistry, servers: list[EchoServer], service: str = "orders",
                       **fields: object) -> list[object]:
    return [await registrant.register(Instance(service, s.name, "127.0.0.1", s.port, **fields))  # type: ignore[arg-type]
            for s in servers]


async def test_round_robin_spreads_calls_evenly(setup: Setup, echo_servers: Callable[..., list[EchoServer]],
                                                xds_clients: Callable[..., XdsClientProcess]) -> None:
    servers = echo_servers(3)
    await register_all(setup.registrant, servers)
    client = xds_clients(setup.bootstrap)
    warm_up = await client.call("xds:///orders", 30)  # until every subchannel is connected
    assert set(warm_up["counts"]) == {s.name for s in servers}
    result = await client.call("xds:///orders", 300)
    assert result["errors"] == {}
    counts = result["counts"]
    assert set(counts) == {s.name for s in servers}
    assert max(counts.values()) - min(counts.values()) <= 3, counts


async def test_deregistered_and_draining_instances_leave_within_100ms(
        setup: Setup, echo_servers: Callable[..., list[EchoServer]],
        xds_clients: Callable[..., XdsClientProcess]) -> None:
    servers = echo_servers(3)
    registrations = await register_all(setup.registrant, servers)
    client = xds_clients(setup.bootstrap)
    target = "xds:///orders"
    await client.start(target)
    await client.wait_for_servers(target, [s.name for s in servers])

    await registrations[0].deregister()  # type: ignore[attr-defined]
    deregistered = time.monotonic()
    await registrations[1].update(status=Status.DRAINING)  # type: ignore[attr-defined]
    drained = time.monotonic()
    await asyncio.sleep(1.0)  # let the loop run on; the record tells when each server was last called
    stats = (await client.stats(target, deregistered - 5))["servers"]
    assert stats[servers[0].name][2] <= deregistered + PROPAGATION_BOUND, "deregistered instance still called"
    assert stats[servers[1].name][2] <= drained + PROPAGATION_BOUND, "DRAINING instance still called"
    late = (await client.stats(target, drained + PROPAGATION_BOUND))
    assert set(late["servers"]) == {servers[2].name}
    assert late["errors"][0] == 0


async def test_new_instance_used_within_100ms_of_the_watch_seeing_it(
        setup: Setup, echo_servers: Callable[..., list[EchoServer]],
        xds_clients: Callable[..., XdsClientProcess]) -> None:
    first, second = echo_servers(2)
    await register_all(setup.registrant, [first])
    client = xds_clients(setup.bootstrap)
    target = "xds:///orders"
    await client.start(target)
    await client.wait_for_servers(target, [first.name])
    await register_all(setup.registrant, [second])
    await client.wait_for_servers(target, [second.name])
    seen = setup.times.up[second.name]
    used = (await client.stats(target, seen - 1))["servers"][second.name][1]
    assert used - seen <= PROPAGATION_BOUND, f"first used {1000 * (used - seen):.0f} ms after the watch saw it"


@pytest.mark.parametrize("kind", REAL_BACKENDS)
@pytest.mark.servers
async def test_killed_registrant_leaves_within_detection_bound(
        kind: str, request: pytest.FixtureRequest, echo_servers: Callable[..., list[EchoServer]],
        xds_clients: Callable[..., XdsClientProcess]) -> None:
    """kill -9 of the process that registered an instance (its server keeps answering, so only the registry
    can take it out of the clients): gone within the backend's detection bound plus 100 ms."""
    url = isolated_url(kind, request, TTL)
    servers = echo_servers(3)
    async with AsyncRegistry.connect(url) as registry, XdsServer(registry) as server:
        await register_all(registry, servers[1:])
        victim = servers[0]
        registrant = subprocess.Popen(
            [sys.executable, "-m", "discovery", "--url", url, "register", "orders", victim.name, "127.0.0.1",
             str(victim.port), "--ttl", f"{TTL:g}"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert registrant.stdout is not None
            line = await asyncio.to_thread(registrant.stdout.readline)
            assert line.startswith("registered"), line
            client = xds_clients(client_bootstrap(server.address))
            await client.start("xds:///orders")
            await client.wait_for_servers("xds:///orders", [s.name for s in servers])
            os.kill(registrant.pid, signal.SIGKILL)
            killed = time.monotonic()
        finally:
            registrant.kill()
            registrant.wait(10)
        bound = registry.detection_bound(TTL)
        await asyncio.sleep(bound + 1.0)
        stats = (await client.stats("xds:///orders", killed - 5))["servers"]
        last = stats[victim.name][2]
        assert last <= killed + bound + PROPAGATION_BOUND, (
            f"called {last - killed:.2f} s after kill -9; bound {bound:.2f} s + 0.1 s")
        assert {s.name for s in servers[1:]} <= set((await client.stats("xds:///orders", killed + bound + 0.2))
                                                    ["servers"])


async def test_namespace_target_and_zones(memory_registry: AsyncRegistry,
                                          echo_servers: Callable[..., list[EchoServer]],
                                          xds_clients: Callable[..., XdsClientProcess]) -> None:
    """``xds:///orders.payments``; three zones become three localities, each with a weight (a locality
    without ``load_balancing_weight`` is acknowledged by gRPC and then never picked)."""
    servers = echo_servers(3)
    for n, server in enumerate(servers):
        await memory_registry.register(Instance("orders", server.name, "127.0.0.1", server.port,
                                                namespace="payments", zone=f"zone-{n}"))
    others = echo_servers(1, prefix="default-")
    await memory_registry.register(Instance("orders", others[0].name, "127.0.0.1", others[0].port))
    async with XdsServer(memory_registry) as server:
        client = xds_clients(client_bootstrap(server.address))
        result = await client.call("xds:///orders.payments", 60)
        assert result["errors"] == {}
        assert set(result["counts"]) == {s.name for s in servers}
        result = await client.call("xds:///orders", 5)
        assert set(result["counts"]) == {others[0].name}


async def test_service_target_uses_named_target_ports(memory_registry: AsyncRegistry,
                                                      echo_servers: Callable[..., list[EchoServer]],
                                                      xds_clients: Callable[..., XdsClientProcess]) -> None:
    """``<svc>.<ns>.svc.cluster.local:<port>``: the selector's endpoints, the port's targetPort resolved per
    instance (each instance declares the named port ``grpc`` on a different number)."""
    servers = echo_servers(3)
    store = ServiceStore(memory_registry.backend)
    await store.apply(Service("shop", "default", selector={"app": "shop"},
                              ports=(ServicePort(80, "grpc", name="grpc"), ServicePort(81, 9, name="other"))))
    for n, server in enumerate(servers):
        # the main port is a dead one: only the named target port answers
        await memory_registry.register(Instance(f"shop-v{n}", server.name, "127.0.0.1", 1, labels={"app": "shop"},
                                                ports={"grpc": server.port}))
    async with XdsServer(memory_registry, rescan_interval=0.1) as server:
        client = xds_clients(client_bootstrap(server.address))
        result = await client.call("xds:///shop.default.svc.cluster.local:80", 60)
        assert result["errors"] == {}
        assert set(result["counts"]) == {s.name for s in servers}


async def test_no_up_instance_fails_fast_and_recovers(memory_registry: AsyncRegistry,
                                                      echo_servers: Callable[..., list[EchoServer]],
                                                      xds_clients: Callable[..., XdsClientProcess]) -> None:
    """All instances DRAINING or none: RPCs fail at once with UNAVAILABLE (not a hang), and the first UP
    instance is used again."""
    (only,) = echo_servers(1)
    registration = await memory_registry.register(Instance("orders", only.name, "127.0.0.1", only.port,
                                                           status=Status.DRAINING))
    async with XdsServer(memory_registry) as server:
        client = xds_clients(client_bootstrap(server.address))
        started = time.monotonic()
        result = await client.call("xds:///orders", 3, timeout=5.0)
        assert result["counts"] == {}
        assert all(message.startswith("UNAVAILABLE") for message in result["errors"]), result
        assert time.monotonic() - started < 4.0
        await registration.update(status=Status.UP)
        await client.start("xds:///orders")
        await client.wait_for_servers("xds:///orders", [only.name])
