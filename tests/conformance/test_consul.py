"""The conformance suite against a real Consul agent (from the test harness)."""

from __future__ import annotations

import uuid

import pytest

from discovery.testing.conformance import ConformanceSuite
from tests.harness import ServerHandle

pytestmark = pytest.mark.servers


class TestConsulConformance(ConformanceSuite):
    short_ttl = 2.0

    @pytest.fixture
    def discovery_url(self, consul_server: ServerHandle) -> str:
        # The path is the backend's scope: each test sees only its own instances on the shared agent.
        return f"{consul_server.url}/conformance-{uuid.uuid4().hex}"
