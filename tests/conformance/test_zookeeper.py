"""The conformance suite against a real ZooKeeper (from the test harness)."""

from __future__ import annotations

import uuid

import pytest

from discovery.testing.conformance import ConformanceSuite
from tests.harness import ServerHandle
from tests.harness.specs import ZK_TICK_MS

pytestmark = pytest.mark.servers


class TestZooKeeperConformance(ConformanceSuite):
    short_ttl = 2.0

    @pytest.fixture
    def discovery_url(self, zookeeper_server: ServerHandle) -> str:
        tick = ZK_TICK_MS / 1000
        return f"{zookeeper_server.url}/conformance-{uuid.uuid4().hex}?session_timeout={self.short_ttl}&tick={tick}"
