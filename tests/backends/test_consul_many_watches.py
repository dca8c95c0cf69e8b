"""Consul: one process watching more services than an HTTP connection pool holds by default.

Each watched service parks one blocking query (one HTTP connection) for up to ``wait`` seconds. aiohttp's
default pool holds 100 connections, so with 100+ watched services every other request (heartbeats,
registrations, reads) would queue behind the blocking queries: heartbeats late, checks critical, calls timing
out. Found by the benchmarks' scale scenario (issue 8).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from discovery.core.backend import RegistrationState
from discovery.core.models import Instance, Snapshot
from discovery.testing import Follower
from tests.backends.consul_support import started_backend
from tests.harness import ServerHandle

pytestmark = pytest.mark.servers

WATCHED = 150  # more than aiohttp's default connection limit of 100
TTL = 2.0


async def test_watching_many_services_starves_neither_heartbeats_nor_calls(consul_server: ServerHandle) -> None:
    scope = f"many-{uuid.uuid4().hex[:8]}"
    # A long blocking wait, so every watch holds its connection for the whole test.
    watcher = await started_backend(f"{consul_server.url}/{scope}?wait=120&timeout=5")
    writer = await started_backend(f"{consul_server.url}/{scope}?timeout=5")
    followers: list[Follower] = []
    try:
        services = [f"svc-{n}" for n in range(WATCHED)]
        await asyncio.gather(*(
            writer.register(Instance(name, "seed", "127.0.0.1", 9000), 30.0, lambda *_: None) for name in services
        ))
        followers = [Follower(watcher.watch("default", name)) for name in services]
        await asyncio.gather(*(f.until(lambda s: s.ids() == {"seed"}, 30.0) for f in followers))

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
        assert propagation < 5.0, f"a change reached the 150th watch after {propagation:.2f} s"
    finally:
        for follower in followers:
            await follower.close()
        await watcher.close()
        await writer.close()
