"""etcd outages against a private server: restart during a watch, compaction past a watcher's revision."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from aetcd import rpc

from discovery.core.backend import RegistrationState
from discovery.core.models import Instance
from discovery.testing import Follower, eventually
from discovery_etcd import EtcdBackend
from tests.backends.etcd_support import ReconnectGate, raw_client, started_backend, unique_prefix
from tests.harness import ServerHandle

pytestmark = [pytest.mark.servers, pytest.mark.asyncio, pytest.mark.slow]

TTL = 4.0
CONVERGENCE = 20.0
T = TypeVar("T")


def instance(service: str, number: int) -> Instance:
    return Instance(service, f"{service}-{number}", "127.0.0.1", 20000 + number)


async def _open(server: ServerHandle, prefix: str) -> EtcdBackend:
    return await started_backend(f"etcd://{server.host}:{server.port}{prefix}?ttl={TTL}&timeout=5")


def _async(read: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def probe() -> T:
        return read()

    return probe


async def _restart(server: ServerHandle) -> None:
    await asyncio.to_thread(server.kill)
    await asyncio.to_thread(server.start)


async def test_restart_during_watch_misses_no_event(fresh_server: Callable[[str], ServerHandle]) -> None:
    server = fresh_server("etcd")
    prefix = unique_prefix()
    registrant = await _open(server, prefix)
    writer = await _open(server, prefix)
    watcher = await _open(server, prefix)
    states: list[RegistrationState] = []
    try:
        for n in (1, 2):
            await registrant.register(instance("restart", n), TTL, lambda state, _reason=None: states.append(state))
        stream = watcher.watch("default", "restart")
        follower = Follower(stream)
        await follower.until(lambda s: s.ids() == {"restart-1", "restart-2"}, CONVERGENCE)
        gate = ReconnectGate(stream)
        await _restart(server)
        stale = await follower.until(lambda s: s.stale, CONVERGENCE)
        assert stale.ids() == {"restart-1", "restart-2"}, "a stale snapshot keeps the last set"
        await asyncio.wait_for(gate.waiting.wait(), CONVERGENCE)
        # While the watcher is away: one instance leaves, two arrive, one is updated.
        await writer.register(instance("restart", 3), TTL, lambda *_: None)
        await writer.register(instance("restart", 4), TTL, lambda *_: None)
        await registrant.deregister(instance("restart", 1))
        await registrant.update(instance("restart", 2).with_changes(weight=7))
        gate.open()
        fresh = await follower.until(lambda s: not s.stale, CONVERGENCE)
        listed = await writer.list("default", "restart")
        assert fresh.same_members(listed)
        assert fresh.ids() == {"restart-2", "restart-3", "restart-4"}
        assert fresh.get("restart-2").weight == 7  # type: ignore[union-attr]
        assert stream.resume_count == 1
        # Registrations survive the restart: etcd keeps leases across restarts and our keepalive goes on.
        await follower.until(lambda s: s.ids() == {"restart-2", "restart-3", "restart-4"}, CONVERGENCE)
        assert RegistrationState.LOST not in states or states[-1] is RegistrationState.RESTORED
        await follower.close()
    finally:
        for backend in (registrant, writer, watcher):
            await backend.close()


async def test_compaction_past_the_watch_revision_relists(fresh_server: Callable[[str], ServerHandle]) -> None:
    server = fresh_server("etcd")
    prefix = unique_prefix()
    registrant = await _open(server, prefix)
    watcher = await _open(server, prefix)
    raw = raw_client(server.host, server.port)
    try:
        await registrant.register(instance("compact", 1), TTL, lambda *_: None)
        stream = watcher.watch("default", "compact")
        follower = Follower(stream)
        await follower.until(lambda s: s.ids() == {"compact-1"}, CONVERGENCE)
        lists_before = stream.list_count
        gate = ReconnectGate(stream)
        await _restart(server)
        await follower.until(lambda s: s.stale, CONVERGENCE)
        await asyncio.wait_for(gate.waiting.wait(), CONVERGENCE)
        await registrant.register(instance("compact", 2), TTL, lambda *_: None)
        await registrant.deregister(instance("compact", 1))
        head = await raw.put(b"/unrelated", b"x")
        await raw.kvstub.Compact(rpc.CompactionRequest(revision=head.header.revision, physical=True))
        gate.open()
        fresh = await follower.until(lambda s: not s.stale and s.ids() == {"compact-2"}, CONVERGENCE)
        assert fresh.same_members(await watcher.list("default", "compact"))
        # etcd cancels the resumed watch as compacted (possibly just after the gap re-list was delivered).
        await eventually(_async(lambda: stream.compacted_count), lambda count: count == 1, CONVERGENCE)
        final = await follower.until(lambda s: not s.stale, CONVERGENCE)
        assert final.same_members(await watcher.list("default", "compact"))
        assert stream.list_count > lists_before, "the watcher must re-list after compaction"
        await follower.close()
    finally:
        await raw.close()
        for backend in (registrant, watcher):
            await backend.close()


async def test_restart_under_a_namespace_watch_leaves_each_stream_to_resume_alone(
    fresh_server: Callable[[str], ServerHandle],
) -> None:
    # 20 services listed together follow one namespace watch (discovery_etcd.watch.NamespaceStream). etcd killed and
    # restarted: every stream shows its set stale, then resumes with a stream of its own from its revision, and
    # shows what changed once etcd is back; nothing is lost or duplicated.
    server = fresh_server("etcd")
    prefix = unique_prefix()
    writer = await _open(server, prefix)
    watcher = await _open(server, prefix)
    services = 20
    followers: list[Follower] = []
    try:
        for n in range(services):
            await writer.register(instance(f"s{n}", 1), TTL, lambda *_: None)
        streams = [watcher.watch("default", f"s{n}") for n in range(services)]
        followers = [Follower(stream) for stream in streams]
        for n, follower in enumerate(followers):
            await follower.until(lambda s, n=n: s.ids() == {f"s{n}-1"}, CONVERGENCE)  # type: ignore[misc]
        shared = streams[0].shared
        assert shared is not None and shared.member_count == services
        await _restart(server)
        for follower in followers:
            await follower.until(lambda s: s.stale, CONVERGENCE)
        await writer.register(instance("s3", 2), TTL, lambda *_: None)
        await writer.deregister(instance("s4", 1))
        assert (await followers[3].until(lambda s: not s.stale and len(s) == 2, CONVERGENCE)).ids() == {"s3-1", "s3-2"}
        assert not (await followers[4].until(lambda s: not s.stale and not s.ids(), CONVERGENCE)).ids()
        for n, follower in enumerate(followers):
            fresh = await follower.until(lambda s: not s.stale, CONVERGENCE)
            assert fresh.same_members(await watcher.list("default", f"s{n}"))
        assert all(stream.shared is None for stream in streams) and not shared.running
    finally:
        for follower in followers:
            await follower.close()
        for backend in (writer, watcher):
            await backend.close()
