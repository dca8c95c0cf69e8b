"""``discovery drain`` / ``discovery set-status`` on a registration another process holds, on ZooKeeper, etcd and
Consul: the owner (``discovery register`` in its own process) adopts the change and says so, its keep-alive never
writes the old status back, and when it heals a lost registration (expired session, revoked lease, an agent that
forgot it) it writes the changed record back. A read-only (foreign) registration is refused with exit 4.

memory:// is per process, so there the owner and the operator are two registries of one process (the conformance
case, and the heal case below); a ``discovery drain`` in another process cannot see the owner at all (exit 1,
tests/cli/test_exit_codes.py).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable

import pytest

from discovery import Instance, RegistrationState, Registry, Snapshot, Status, Watch
from discovery.memory import memory_store
from tests.cli.support import Running, run
from tests.harness import ServerHandle, isolated_url

TTL = 2.0
REAL = ["zookeeper", "etcd", "consul"]


@pytest.fixture(params=REAL)
def real_url(request: pytest.FixtureRequest) -> str:
    request.applymarker(pytest.mark.servers)
    return isolated_url(str(request.param), request, f"oper-{uuid.uuid4().hex[:10]}", ttl=TTL, consul_ttl=TTL)


def status_of(instance_id: str) -> Callable[[Snapshot], Status | None]:
    def read(snapshot: Snapshot) -> Status | None:
        found = snapshot.get(instance_id)
        return None if found is None else found.status

    return read


def shows(instance_id: str, status: Status) -> Callable[[Snapshot], bool]:
    return lambda snapshot: status_of(instance_id)(snapshot) is status


def assert_stays(watch: Watch, instance_id: str, status: Status, seconds: float) -> None:
    """Every snapshot for ``seconds`` shows ``instance_id`` with ``status`` (none may show it reverted)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            snapshot = watch.next(left)
        except TimeoutError:
            return
        assert status_of(instance_id)(snapshot) is status, f"reverted: {snapshot}"


def test_the_owner_in_another_process_adopts_drain_and_set_status(real_url: str) -> None:
    owner = Running("register", "web", "w1", "127.0.0.1", "8080", "--label", "app=web", "--ttl", f"{TTL:g}",
                    "--url", real_url)
    try:
        owner.wait_for("registered default/web/w1")
        with Registry.connect(real_url) as watcher, watcher.watch("web") as watch:
            watch.until(shows("w1", Status.UP), 15)

            drained = run("drain", "web/w1", "--url", real_url)
            assert (drained.returncode, drained.stdout) == (0, "default/web/w1 is DRAINING\n"), drained.stderr
            watch.until(shows("w1", Status.DRAINING), 15)
            owner.wait_for(r"changed by someone else, adopted: default/web/w1 is DRAINING \(labels app=web\)", 15)
            assert watcher.instances("web") == (), "out of every client's picks"
            # Three TTLs of the owner's heartbeats: nothing writes UP back.
            assert_stays(watch, "w1", Status.DRAINING, 3 * TTL)

            for status in ("DOWN", "UP"):
                changed = run("set-status", "web/w1", status.lower(), "--url", real_url)
                assert changed.stdout == f"default/web/w1 is {status}\n", changed.stderr
                watch.until(shows("w1", Status(status)), 15)
                owner.wait_for(f"adopted: default/web/w1 is {status}", 15)

            assert owner.stop(signal.SIGINT) == 130
            watch.until(lambda s: s.get("w1") is None, 5)  # deregistered on Ctrl-C, not left to expire
    finally:
        owner.kill()


def make_the_server_forget(registry: Registry, kind: str, server: ServerHandle | None, url: str) -> None:
    """Make the backend lose the owner's registration while the owner lives, so that it heals it."""
    backend = registry.async_registry.backend
    if kind == "memory":
        memory_store(url.split("/")[3].split("?")[0]).remove(("default", "web", "w1"))
    elif kind == "etcd":
        async def revoke() -> None:
            for lease_id in backend.lease_ids().values():  # type: ignore[attr-defined]
                await backend.pool.call("revoke", lambda client, lid=lease_id: client.revoke_lease(lid))  # type: ignore[attr-defined]

        asyncio.run_coroutine_threadsafe(revoke(), registry.loop).result(15)
    elif kind == "zookeeper":
        from tests.backends.zookeeper_support import expire_session_now

        assert server is not None
        expire_session_now(server, backend)  # type: ignore[arg-type]
    else:
        from discovery_consul.layout import consul_service_id

        assert server is not None
        instance = Instance("web", "w1", "127.0.0.1", 8080)
        service_id = consul_service_id(instance, backend.settings.scope)  # type: ignore[attr-defined]
        request = urllib.request.Request(f"http://{server.host}:{server.port}/v1/agent/service/deregister/"
                                         f"{service_id}", method="PUT", data=b"")
        urllib.request.urlopen(request, timeout=5).close()


@pytest.mark.parametrize("kind", ["memory", *REAL])
def test_a_healed_registration_keeps_the_adopted_status(kind: str, request: pytest.FixtureRequest) -> None:
    if kind != "memory":
        request.applymarker(pytest.mark.servers)
    url = isolated_url(kind, request, f"heal-{uuid.uuid4().hex[:10]}", ttl=TTL, memory_ttl=1, consul_ttl=TTL)
    server = None if kind == "memory" else request.getfixturevalue(f"{kind}_server")
    with Registry.connect(url) as owner, Registry.connect(url) as reader, reader.watch("web") as watch:
        registration = owner.register(Instance("web", "w1", "127.0.0.1", 8080), ttl=TTL)
        watch.until(shows("w1", Status.UP), 15)
        if kind == "memory":  # the same process: memory stores are per process
            reader.set_status("web", "w1", Status.DRAINING)
        else:
            done = run("drain", "web/w1", "--url", url)
            assert done.returncode == 0, done.stderr
        watch.until(shows("w1", Status.DRAINING), 15)
        deadline = time.monotonic() + 15
        while registration.instance.status is not Status.DRAINING:
            assert time.monotonic() < deadline, "the owner did not adopt the drain"
            time.sleep(0.02)

        make_the_server_forget(owner, kind, server, url)
        registration.wait_for(RegistrationState.RESTORED, timeout=30)
        assert RegistrationState.LOST in registration.history
        # Written back as the operator left it, and it stays so.
        watch.until(shows("w1", Status.DRAINING), 15)
        assert_stays(watch, "w1", Status.DRAINING, 2 * TTL)
        assert [i.status for i in reader.instances("web", statuses=None)] == [Status.DRAINING]
        assert registration.instance.status is Status.DRAINING


@pytest.mark.servers
def test_a_foreign_registration_is_read_only(etcd_server: ServerHandle) -> None:
    """A Go service's etcd naming endpoint (``<target>/<host:port>``, no metadata of ours) cannot be changed."""
    prefix = f"foreign-{uuid.uuid4().hex[:8]}"
    url = f"{etcd_server.url}/{prefix}"
    with Registry.connect(url) as registry:
        backend = registry.async_registry.backend
        key = f"/{prefix}/default/web/10.0.0.1:8080".encode()
        value = b'{"Op":0,"Addr":"10.0.0.1:8080","Metadata":null}'
        asyncio.run_coroutine_threadsafe(
            backend.pool.call("put", lambda client: client.put(key, value)), registry.loop  # type: ignore[attr-defined]
        ).result(15)
        [foreign] = registry.instances("web")
        done = run("drain", f"web/{foreign.id}", "--url", url)
        assert done.returncode == 4, done.stderr
        assert "registered by another tool" in done.stderr and "read-only" in done.stderr
        assert [i.status for i in registry.instances("web", statuses=None)] == [Status.UP]


@pytest.mark.servers
def test_spring_cloud_zookeeper_records_get_springs_status_and_serversets_are_read_only(
        zookeeper_server: ServerHandle) -> None:
    """On ZooKeeper a Spring Cloud Zookeeper instance is drained the way Spring's own service-registry endpoint
    does it (``payload.metadata.instance_status: OUT_OF_SERVICE``), and the rest of its record stays byte for byte;
    a Finagle ServerSet member has no such field: exit 4."""
    from tests.backends.zookeeper_support import raw_client

    root = f"spring-{uuid.uuid4().hex[:8]}"
    url = f"{zookeeper_server.url}/{root}"
    spring = {"name": "books", "id": "b1", "address": "10.0.0.5", "port": 8080, "sslPort": None,
              "payload": {"@class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance", "id": "b1",
                          "name": "books", "metadata": {"instance_status": "UP", "zone": "z1"}},
              "registrationTimeUTC": 1700000000000, "serviceType": "DYNAMIC", "uriSpec": None}
    client = raw_client(zookeeper_server)
    try:
        client.create(f"/{root}/default/books/b1", json.dumps(spring).encode(), makepath=True)
        client.create(f"/{root}/default/search/member_0000000001", json.dumps(
            {"serviceEndpoint": {"host": "10.0.0.6", "port": 9000}, "status": "ALIVE"}).encode(), makepath=True)
        done = run("drain", "books/b1", "--url", url)
        assert done.returncode == 0, done.stderr
        stored = json.loads(client.get(f"/{root}/default/books/b1")[0])
        assert stored["payload"]["metadata"] == {"instance_status": "OUT_OF_SERVICE", "zone": "z1"}
        assert {k: v for k, v in stored.items() if k != "payload"} == {k: v for k, v in spring.items()
                                                                       if k != "payload"}
        with Registry.connect(url) as registry:
            assert [i.status for i in registry.instances("books", statuses=None)] == [Status.DRAINING]
        refused = run("drain", "search/member_0000000001", "--url", url)
        assert refused.returncode == 4 and "read-only" in refused.stderr, refused.stderr
    finally:
        client.delete(f"/{root}", recursive=True)
        client.stop()
        client.close()


@pytest.mark.servers
def test_a_foreign_consul_service_can_be_drained_like_consul_maint(consul_server: ServerHandle) -> None:
    """A service registered with the agent by another tool: maintenance mode on and off (what ``consul maint``
    does); DOWN would need our status check, so it is refused with exit 4."""
    from tests.backends.consul_support import http_json

    name = f"books-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"Name": name, "ID": f"{name}-1", "Address": "127.0.0.1", "Port": 8080}).encode()
    urllib.request.urlopen(urllib.request.Request(
        f"http://{consul_server.host}:{consul_server.port}/v1/agent/service/register", method="PUT", data=body),
        timeout=5).close()
    try:
        with Registry.connect(consul_server.url) as registry, registry.watch(name) as watch:
            watch.until(shows(f"{name}-1", Status.UP), 15)
            assert run("drain", f"{name}/{name}-1", "--url", consul_server.url).returncode == 0
            watch.until(shows(f"{name}-1", Status.DRAINING), 15)
            checks = http_json(consul_server.host, consul_server.port, "/v1/agent/checks")
            assert f"_service_maintenance:{name}-1" in checks
            refused = run("set-status", f"{name}/{name}-1", "DOWN", "--url", consul_server.url)
            assert refused.returncode == 4 and "registered by another tool" in refused.stderr, refused.stderr
            assert run("set-status", f"{name}/{name}-1", "UP", "--url", consul_server.url).returncode == 0
            watch.until(shows(f"{name}-1", Status.UP), 15)
    finally:
        http_json(consul_server.host, consul_server.port, f"/v1/agent/service/deregister/{name}-1", "PUT")
