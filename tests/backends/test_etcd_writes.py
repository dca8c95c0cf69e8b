"""etcd writes: concurrent registrations share round trips (one transaction each), counted at the server."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest

from discovery.core.models import Instance
from discovery.registry.async_registry import AsyncRegistry
from tests.backends.etcd_support import started_backend, unique_prefix
from tests.harness import ServerHandle
from tests.harness.relay import Relay

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


async def test_a_call_whose_client_is_closed_under_it_is_retried_with_a_new_client(etcd_server: ServerHandle) -> None:
    # After an etcd restart with auth on, the first call to meet the stale token renews the pool's client, which
    # closes it under every other call in flight. grpc.aio reports those calls as a cancellation of the task awaiting
    # them: a register() racing the owner's own watch raised CancelledError (CI, tests/security/test_etcd_security.py).
    # Such a call is a connection error now, retried with the new client.
    prefix = unique_prefix()
    with Relay(etcd_server.host, etcd_server.port) as relay:
        backend = await started_backend(f"etcd://{relay.address}{prefix}?ttl=30&timeout=5")
        try:
            pool = backend.pool
            client = await pool.client()
            relay.delay(0.3)
            key = f"{prefix}/closed-under".encode()
            put = asyncio.create_task(pool.call("write a key", lambda c: c.put(key, b"v")))
            await asyncio.sleep(0.1)  # the put is on its way: the relay holds every chunk 0.3 s
            await pool.renew(client)  # what the call that met a stale token does
            relay.pass_through()
            await asyncio.wait_for(put, 10)
            assert not put.cancelled()
            read = await pool.call("read a key", lambda c: c.get(key))
            assert read is not None and read.value == b"v"
            assert await pool.client() is not client
        finally:
            relay.pass_through()
            await backend.close()
