"""The conformance suite against a real Consul agent (from the test harness)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from discovery.core.models import Instance
from discovery.core.urls import parse_url
from discovery.testing.conformance import ConformanceSuite
from discovery_consul import layout
from discovery_consul.settings import ConsulSettings
from tests.backends.consul_support import http_json
from tests.harness import ServerHandle

pytestmark = pytest.mark.servers


class TestConsulConformance(ConformanceSuite):
    short_ttl = 2.0

    @pytest.fixture
    def discovery_url(self, consul_server: ServerHandle) -> str:
        # The path is the backend's scope: each test sees only its own instances on the shared agent.
        return f"{consul_server.url}/conformance-{uuid.uuid4().hex}"

    async def remove_as_operator(self, discovery_url: str, instance: Instance) -> None:
        settings = ConsulSettings.from_url(parse_url(discovery_url))
        service_id = layout.consul_service_id(instance, settings.scope)
        path = f"/v1/agent/service/deregister/{service_id}"
        await asyncio.to_thread(http_json, settings.host, settings.port, path, "PUT")
