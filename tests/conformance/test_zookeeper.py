"""The conformance suite against a real ZooKeeper (from the test harness)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from kazoo.client import KazooClient

from discovery.core.models import Instance
from discovery.core.urls import parse_url
from discovery.testing.conformance import ConformanceSuite
from discovery_zookeeper.layout import Layout
from discovery_zookeeper.settings import ZooKeeperConfig
from tests.harness import ServerHandle
from tests.harness.specs import ZK_TICK_MS

pytestmark = pytest.mark.servers


class TestZooKeeperConformance(ConformanceSuite):
    short_ttl = 2.0

    @pytest.fixture
    def discovery_url(self, zookeeper_server: ServerHandle) -> str:
        tick = ZK_TICK_MS / 1000
        return f"{zookeeper_server.url}/conformance-{uuid.uuid4().hex}?session_timeout={self.short_ttl}&tick={tick}"

    async def remove_as_operator(self, discovery_url: str, instance: Instance) -> None:
        config = ZooKeeperConfig.from_url(parse_url(discovery_url))
        path = Layout(config.root).instance_path(instance)

        def delete() -> None:
            client = KazooClient(hosts=config.hosts, timeout=10)
            client.start(timeout=15)
            try:
                client.delete(path)
            finally:
                client.stop()
                client.close()

        await asyncio.to_thread(delete)


class TestZooKeeperOneShotWatchesConformance(TestZooKeeperConformance):
    """The same suite with ``persistent_watches=false``: streams on one-shot watches and an owner check per
    registration, as on a server before ZooKeeper 3.6 (docs/decisions/zookeeper-watches.md)."""

    @pytest.fixture
    def discovery_url(self, zookeeper_server: ServerHandle) -> str:
        tick = ZK_TICK_MS / 1000
        return (f"{zookeeper_server.url}/conformance-{uuid.uuid4().hex}?session_timeout={self.short_ttl}&tick={tick}"
                "&persistent_watches=false")
