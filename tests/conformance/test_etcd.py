"""The conformance suite against a real etcd (from the test harness)."""

from __future__ import annotations

import uuid

import aetcd
import pytest

from discovery.core.models import Instance
from discovery.core.urls import parse_url
from discovery.testing.conformance import ConformanceSuite
from discovery_etcd.layout import KeyLayout
from discovery_etcd.settings import EtcdSettings
from tests.harness import ServerHandle

pytestmark = pytest.mark.servers


class TestEtcdConformance(ConformanceSuite):
    short_ttl = 2.0

    @pytest.fixture
    def discovery_url(self, etcd_server: ServerHandle) -> str:
        # The path is the key prefix: each test sees only its own keys on the shared server.
        return f"{etcd_server.url}/conformance-{uuid.uuid4().hex}?ttl={self.short_ttl}"

    async def remove_as_operator(self, discovery_url: str, instance: Instance) -> None:
        settings = EtcdSettings.from_url(parse_url(discovery_url))
        key = KeyLayout(settings.prefix).instance_key(instance.namespace, instance.service, instance.id)
        endpoint = settings.endpoints[0]
        async with aetcd.Client(host=endpoint.host, port=endpoint.port, timeout=5) as client:
            assert await client.delete(key) is not None, "the key was not there to delete"
