"""The conformance suite against a real etcd (from the test harness)."""

from __future__ import annotations

import uuid

import pytest

from discovery.testing.conformance import ConformanceSuite
from tests.harness import ServerHandle

pytestmark = pytest.mark.servers


class TestEtcdConformance(ConformanceSuite):
    short_ttl = 2.0

    @pytest.fixture
    def discovery_url(self, etcd_server: ServerHandle) -> str:
        # The path is the key prefix: each test sees only its own keys on the shared server.
        return f"{etcd_server.url}/conformance-{uuid.uuid4().hex}?ttl={self.short_ttl}"
