"""The conformance suite against the embedded in-memory backend."""

from __future__ import annotations

import uuid

import pytest

from discovery.core.models import Instance
from discovery.core.urls import parse_url
from discovery.memory import memory_store
from discovery.testing.conformance import ConformanceSuite


class TestMemoryConformance(ConformanceSuite):
    short_ttl = 0.5

    @pytest.fixture
    def discovery_url(self) -> str:
        return f"memory:///conformance-{uuid.uuid4().hex}"

    async def remove_as_operator(self, discovery_url: str, instance: Instance) -> None:
        memory_store(parse_url(discovery_url).path.strip("/")).remove(instance.key)
