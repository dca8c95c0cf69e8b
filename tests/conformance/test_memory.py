"""The conformance suite against the embedded in-memory backend."""

from __future__ import annotations

import uuid

import pytest

from discovery.testing.conformance import ConformanceSuite


class TestMemoryConformance(ConformanceSuite):
    short_ttl = 0.5

    @pytest.fixture
    def discovery_url(self) -> str:
        return f"memory:///conformance-{uuid.uuid4().hex}"
