"""Consul: one process watching more services than an agent accepts connections from one client by default.

Each watched service used to park one blocking query (one HTTP connection): aiohttp's default pool of 100
queued the 101st watch and every heartbeat behind them (issue 8), and an agent refuses a client address's 201st
connection by default. Now one change feed serves every watch (issue 20): watching takes at most 8 connections
whatever the number of services, and neither heartbeats nor calls wait behind it.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import psutil
import pytest

from discovery.core.backend import RegistrationState
from discovery.core.models import Instance, Snapshot
from discovery.testing import Follower
from tests.backends.consul_support import started_backend
from tests.harness import ServerHandle

pytestmark = pytest.mark.servers

WATCHED = 250  # more than aiohttp's default pool (100) and an agent's default connections per client (200)
MAX_WATCH_CONNECTIONS = 8
TTL = 2.0


async def test_watching_many_services_starves_neither_heartbeats_nor_calls(consul_server: ServerHandle) -> None:
    scope = f"many-{uuid.uuid4().hex[:8]}"
    # A long blocking wait: the change feed stays parked on its connection for the whole test.
    watcher = await started_backend(f"{consul_server.url}/{scope}?wait=120&timeout=5")
    writer = await started_backend(f"{consul_server.url}/{scope}?timeout=5")
    followers: list[Follower] = []
    try:
        services = [f"svc-{n}" for n in range(WATCHED)]
        await asyncio.gather(*(
            writer.register(Instance(name, "seed", "127.0.0.1", 9000), 30.0, lambda *_: None) for name in services
        ))
        before = _connections_to(consul_server.port)  # the writer's pooled connections, kept open
        followers = [Follower(watcher.watch("default", name)) for name in services]
        await asyncio.gather(*(f.until(lambda s: s.ids() == {"seed"}, 30.0) for f in followers))
        watching = _connections_to(consul_server.port) - before
        assert watching <= MAX_WATCH_CONNECTIONS, f"{WATCHED} watches hold {watching} connections to the agent"

        states: list[RegistrationState] = []
        started = time.monotonic()
        # The watching backend registers too: its heartbeat must not wait behind its own blocking queries.
        own = Instance("own", "o1", "127.0.0.1", 9001)
        await watcher.register(own, TTL, lambda state, _reason=None: states.append(state))
        register_took = time.monotonic() - started

        changed = Instance(services[-1], "late", "127.0.0.1", 9002)
        started = time.monotonic()
        await writer.register(changed, 30.0, lambda *_: None)
        seen = await followers[-1].until(lambda s: "late" in s.ids(), 10.0)
        assert isinstance(seen, Snapshot)
        propagation = time.monotonic() - started

        # Three TTLs: a starved heartbeat would have let the check go critical and the registration get LOST.
        deadline = time.monotonic() + 3 * TTL
        while time.monotonic() < deadline:
            listed = await watcher.list("default", "own")
            assert [i.id for i in listed] == ["o1"], listed
            await asyncio.sleep(0.5)
        own = await writer.list("default", "own")
        assert own[0].status.value == "UP", own
        assert RegistrationState.LOST not in states, states
        assert register_took < 5.0, f"register() with {WATCHED} watches open took {register_took:.2f} s"
        assert propagation < 5.0, f"a change reached the {WATCHED}th watch after {propagation:.2f} s"
        assert _connections_to(consul_server.port) - before <= MAX_WATCH_CONNECTIONS + 2  # + the own registration's
    finally:
        for follower in followers:
            await follower.close()
        await watcher.close()
        await writer.close()


def _connections_to(port: int) -> int:
    """This process's open TCP connections to ``port`` (the agent); closing ones (a cancelled query's) no more."""
    return sum(
        1 for connection in psutil.Process().net_connections(kind="tcp")
        if connection.raddr and connection.raddr.port == port and connection.status == psutil.CONN_ESTABLISHED
    )
