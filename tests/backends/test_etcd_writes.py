"""etcd writes: concurrent registrations share round trips (one transaction each), counted at the server."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest

from discovery.core.models import Instance
from discovery.registry.async_registry import AsyncRegistry
from tests.backends.etcd_support import unique_prefix
from tests.harness import ServerHandle

pytestmark = pytest.mark.servers

CONCURRENT = 64


def _writes_handled(server: ServerHandle) -> int:
    """Put and Txn requests etcd has handled (its gRPC server metrics, every client)."""
    with urllib.request.urlopen(f"http://{server.host}:{server.port}/metrics", timeout=5) as answer:  # loopback
        text = answer.read().decode()
    pattern = r'^grpc_server_handled_total\{[^}]*grpc_method="(?:Put|Txn)"[^}]*\} (\d+(?:\.\d+)?(?:e\+\d+)?)$'
    return int(sum(float(found) for found in re.findall(pattern, text, flags=re.MULTILINE)))


async def test_concurrent_registrations_share_round_trips(etcd_server: ServerHandle) -> None:
    async with await AsyncRegistry.connect(f"{etcd_server.url}{unique_prefix()}?ttl=30") as registry:
        await registry.register(Instance("api", "first", "127.0.0.1", 9000))  # the lease exists from here on
        before = await asyncio.to_thread(_writes_handled, etcd_server)
        await asyncio.gather(*(registry.register(Instance("api", f"api-{n}", "127.0.0.1", 9001 + n))
                               for n in range(CONCURRENT)))
        after = await asyncio.to_thread(_writes_handled, etcd_server)
        assert len(await registry.instances("api")) == CONCURRENT + 1
    # One put per registration was 64 requests; group commit sends a lone first one and then the rest together.
    assert after - before <= 4, f"{after - before} write requests for {CONCURRENT} concurrent registrations"
