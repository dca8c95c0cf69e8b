"""Connection states on every real backend (issue 18): a partition makes the connection ``suspended``, a long one
``lost``, healing it ``reconnected``; ``registry.health()`` follows, and so does the metrics listener.

The client talks to a shared server through a fault-injecting relay (tests/harness/relay.py); ``cut()`` resets
every connection, as a dead link does, and ``pass_through()`` heals it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from discovery import AsyncRegistry, Instance, RegistrationState
from discovery.core.connection import ConnectionState, ConnectionStatus
from discovery.observability import MetricsListener, add_metrics_listener
from tests.faults.targets import TTL, Target
from tests.harness import ServerHandle
from tests.harness.relay import Relay

pytestmark = [pytest.mark.servers, pytest.mark.slow]

BACKENDS = ("zookeeper", "etcd", "consul")
#: Generous bound for each transition: the slowest notice (Consul: request timeout + blocking wait) plus the
#: lost timer (TTL + detection slack) plus reconnect back-off.
TRANSITION = 30.0


class ConnectionEvents(MetricsListener):
    def __init__(self) -> None:
        self.seen: list[ConnectionState] = []

    def on_connection_state(self, status: ConnectionStatus) -> None:
        self.seen.append(status.state)


@pytest.fixture
def relayed(request: pytest.FixtureRequest) -> Iterator[tuple[str, Relay]]:
    kind: str = request.param
    server: ServerHandle = request.getfixturevalue(f"{kind}_server")
    with Relay(server.host, server.port) as relay:
        yield Target(kind).url(relay.address), relay


async def _until(states: list[ConnectionState], wanted: ConnectionState, after: int = 0) -> int:
    """Wait until ``wanted`` is among ``states[after:]``; its index."""
    async with asyncio.timeout(TRANSITION):
        while wanted not in states[after:]:
            await asyncio.sleep(0.05)
    return states.index(wanted, after)


@pytest.mark.parametrize("relayed", BACKENDS, indirect=True)
async def test_a_partition_suspends_then_loses_and_healing_reconnects(relayed: tuple[str, Relay]) -> None:
    url, relay = relayed
    metrics = ConnectionEvents()
    remove = add_metrics_listener(metrics)
    try:
        async with AsyncRegistry.connect(url) as registry:
            states: list[ConnectionState] = []
            registry.add_connection_listener(lambda status: states.append(status.state))
            assert registry.connection is not None and registry.connection.state is ConnectionState.CONNECTED
            registration = await registry.register(Instance("conn", "conn-1", "127.0.0.1", 20001), ttl=TTL)
            async with registry.watch("conn") as watch:
                await watch.until(lambda s: s.ids() == {"conn-1"}, TRANSITION)
                assert registry.health().ready, registry.health().problems

                relay.cut()
                suspended = await _until(states, ConnectionState.SUSPENDED)
                health = registry.health()
                assert not health.ready
                assert any("connection is suspended" in p or "connection is lost" in p for p in health.problems)
                lost = await _until(states, ConnectionState.LOST, suspended)

                relay.pass_through()
                await _until(states, ConnectionState.RECONNECTED, lost)
                if RegistrationState.LOST in registration.history:  # Consul may not notice a short outage
                    await registration.wait_for(RegistrationState.RESTORED, TRANSITION)
                await watch.until(lambda s: not s.stale and s.ids() == {"conn-1"}, TRANSITION)
                async with asyncio.timeout(TRANSITION):
                    while not registry.health().ready:
                        await asyncio.sleep(0.05)
            assert states[0] is ConnectionState.SUSPENDED, states
            assert metrics.seen[0] is ConnectionState.CONNECTED
            assert metrics.seen[1:] == states  # the metrics listener heard the same transitions
    finally:
        remove()
