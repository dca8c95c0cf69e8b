"""Smoke tests for the real-server harness: one real client round trip per server, plus restart semantics.

Run e.g. ``pytest tests/test_servers_smoke.py --servers=process`` (or container / external).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tests.harness import ServerHandle

pytestmark = pytest.mark.servers


def _name() -> str:
    return f"smoke-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------------- zookeeper


def _kazoo(server: ServerHandle):  # type: ignore[no-untyped-def]
    from kazoo.client import KazooClient

    client = KazooClient(hosts=f"{server.host}:{server.port}", timeout=4.0)
    client.start(timeout=15)
    return client


def test_zookeeper_znode_round_trip(zookeeper_server: ServerHandle) -> None:
    assert zookeeper_server.url == f"zookeeper://127.0.0.1:{zookeeper_server.port}"
    client = _kazoo(zookeeper_server)
    try:
        path = f"/{_name()}/node"
        client.create(path, b"hello", makepath=True)
        data, stat = client.get(path)
        assert data == b"hello" and stat.version == 0
        client.delete(path.rsplit("/", 1)[0], recursive=True)
        assert client.exists(path) is None
    finally:
        client.stop()
        client.close()


# ------------------------------------------------------------------------------------------------ etcd


async def test_etcd_put_get(etcd_server: ServerHandle) -> None:
    import aetcd

    assert etcd_server.url == f"etcd://127.0.0.1:{etcd_server.port}"
    async with aetcd.Client(host=etcd_server.host, port=etcd_server.port, timeout=10) as client:
        key = f"/{_name()}".encode()
        await client.put(key, b"value")
        got = await client.get(key)
        assert got is not None and got.value == b"value"
        await client.delete(key)
        assert await client.get(key) is None


# ---------------------------------------------------------------------------------------------- consul


def test_consul_kv_and_catalog(consul_server: ServerHandle) -> None:
    import consul

    assert consul_server.url == f"consul://127.0.0.1:{consul_server.port}"
    if consul_server.provider != "external":
        assert set(consul_server.ports) == {"http", "dns", "serf_lan", "serf_wan", "server"}
    c = consul.Consul(host=consul_server.host, port=consul_server.port)
    key = _name()
    assert c.kv.put(key, "value") is True
    _, item = c.kv.get(key)
    assert item is not None and item["Value"] == b"value"
    c.kv.delete(key)

    service = _name()
    c.agent.service.register(service, service_id=f"{service}-1", address="127.0.0.1", port=9999, tags=["smoke"])
    try:
        _, nodes = c.catalog.service(service)
        assert [(n["ServiceID"], n["ServicePort"]) for n in nodes] == [(f"{service}-1", 9999)]
    finally:
        c.agent.service.deregister(f"{service}-1")


async def test_consul_aio_kv(consul_server: ServerHandle) -> None:
    import consul.aio

    c = consul.aio.Consul(host=consul_server.host, port=consul_server.port)
    try:
        key = _name()
        assert await c.kv.put(key, "async") is True
        _, item = await c.kv.get(key)
        assert item is not None and item["Value"] == b"async"
        await c.kv.delete(key)
    finally:
        await c.close()


# ------------------------------------------------------------------------------------ restart semantics


def test_zookeeper_kill_start_keeps_data_and_wipe_clears_it(fresh_server: Callable[[str], ServerHandle]) -> None:
    server = fresh_server("zookeeper")
    port = server.port
    client = _kazoo(server)
    client.create("/keep", b"1")
    client.stop()
    client.close()

    server.kill()
    assert not server.running
    server.start()
    assert server.port == port
    client = _kazoo(server)
    try:
        assert client.get("/keep")[0] == b"1"
    finally:
        client.stop()
        client.close()

    server.stop()
    server.wipe_data()
    server.start()
    client = _kazoo(server)
    try:
        assert client.exists("/keep") is None
    finally:
        client.stop()
        client.close()


async def test_etcd_kill_start_keeps_data(fresh_server: Callable[[str], ServerHandle]) -> None:
    import aetcd

    server = fresh_server("etcd")
    async with aetcd.Client(host=server.host, port=server.port, timeout=10) as client:
        await client.put(b"/keep", b"1")
    server.kill()
    server.start()
    async with aetcd.Client(host=server.host, port=server.port, timeout=10) as client:
        got = await client.get(b"/keep")
        assert got is not None and got.value == b"1"


def test_consul_restart_loses_state(fresh_server: Callable[[str], ServerHandle]) -> None:
    import consul

    server = fresh_server("consul")
    assert not server.keeps_data
    c = consul.Consul(host=server.host, port=server.port)
    c.kv.put("gone-after-restart", "1")
    server.kill()
    server.start()
    c = consul.Consul(host=server.host, port=server.port)
    assert c.kv.get("gone-after-restart")[1] is None
    assert "127.0.0.1" in server.logs()
