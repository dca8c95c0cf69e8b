"""Reading many ZooKeeper nodes in one request (3.6+ ``multiRead``): a service is listed with one request per 200
nodes instead of one ``get`` per node, with the same answers for missing, empty and forbidden nodes; a server
without persistent watches, or a URL that turns them off, keeps one ``get`` per node (real servers)."""

from __future__ import annotations

import asyncio

import pytest
from kazoo.security import make_digest_acl

from discovery.core.errors import PermissionDeniedError
from discovery.core.models import Instance
from discovery.registry.async_registry import AsyncRegistry
from discovery_zookeeper import ZooKeeperBackend, multiread
from discovery_zookeeper.connection import ZooKeeperSession
from tests.backends.zookeeper_support import backend_url, raw_client, requests_sent
from tests.harness import ServerHandle

SETTLE = 10.0



async def _register(registry: AsyncRegistry, service: str, count: int) -> None:
    await asyncio.gather(*(
        registry.register(Instance(service, f"{service}-{n}", "127.0.0.1", 9000 + n)) for n in range(count)
    ))


def _session(registry: AsyncRegistry) -> ZooKeeperSession:
    backend = registry.backend
    assert isinstance(backend, ZooKeeperBackend)
    session = backend.session_for_tests()
    assert session is not None
    return session


@pytest.mark.servers
async def test_a_watched_service_is_read_with_one_request_per_two_hundred_nodes(
    zookeeper_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = backend_url(zookeeper_server)
    count = multiread.MAX_READS + 50
    async with await AsyncRegistry.connect(url, follow_records=False) as writer, \
            await AsyncRegistry.connect(url, follow_records=False) as reader:
        await _register(writer, "api", count)
        sent = requests_sent(monkeypatch)
        async with reader.watch("api") as watch:
            shown = await watch.until(lambda s: len(s) == count, SETTLE)
        listed = await reader.backend.list("default", "api")
        monkeypatch.undo()
    assert shown.get("api-7") == Instance("api", "api-7", "127.0.0.1", 9007)
    assert listed == shown.instances
    # Two requests for the stream's reads and two for list(); before, one get per node (500 here).
    assert sent.count("multiRead") == 4 and sent.count("get") == 0, sent[:10]
    assert _session(reader).multi_reads == 4


@pytest.mark.servers
async def test_missing_empty_and_foreign_nodes_read_together_answer_as_single_reads(
    zookeeper_server: ServerHandle,
) -> None:
    url = backend_url(zookeeper_server)
    root = "/" + url.split("/")[3].split("?")[0]
    raw = raw_client(zookeeper_server)
    try:
        raw.create(f"{root}/t/data", b"some bytes", makepath=True)
        raw.create(f"{root}/t/empty", None)
        async with await AsyncRegistry.connect(url) as registry:
            session = _session(registry)
            assert session.persistent_watches is True  # learned at start (ZooKeeper 3.8 and 3.9 have them)
            paths = [f"{root}/t/data", f"{root}/t/missing", f"{root}/t/empty", f"{root}/t/data"]
            assert await session.get_many(paths) == [b"some bytes", None, None, b"some bytes"]
            assert session.multi_reads == 1
    finally:
        raw.stop()
        raw.close()


@pytest.mark.servers
async def test_a_forbidden_node_among_many_is_refused_as_a_single_read_is(zookeeper_server: ServerHandle) -> None:
    url = backend_url(zookeeper_server)
    root = "/" + url.split("/")[3].split("?")[0]
    raw = raw_client(zookeeper_server)
    try:
        raw.create(f"{root}/t/open", b"open", makepath=True)
        raw.create(f"{root}/t/closed", b"secret", acl=[make_digest_acl("someone-else", "password", all=True)])
        async with await AsyncRegistry.connect(url) as registry:
            session = _session(registry)
            with pytest.raises(PermissionDeniedError) as many:
                await session.get_many([f"{root}/t/open", f"{root}/t/closed"])
            with pytest.raises(PermissionDeniedError) as one:
                await session.get_many([f"{root}/t/closed"])
            assert session.multi_reads == 1
    finally:
        raw.stop()
        raw.close()
    assert str(many.value) == str(one.value)
    assert "secret" not in str(many.value)


@pytest.mark.servers
async def test_without_persistent_watches_each_node_is_read_with_a_get(
    zookeeper_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = backend_url(zookeeper_server, persistent_watches="false")
    async with await AsyncRegistry.connect(url, follow_records=False) as writer, \
            await AsyncRegistry.connect(url, follow_records=False) as reader:
        await _register(writer, "api", 5)
        sent = requests_sent(monkeypatch)
        async with reader.watch("api") as watch:
            await watch.until(lambda s: len(s) == 5, SETTLE)
        monkeypatch.undo()
    assert sent.count("get") == 5 and "multiRead" not in sent
