"""ZooKeeper-specific liveness: forced expiry, stale leftover nodes, abort without CloseSession, server restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from discovery.core.backend import RegistrationState
from discovery.core.models import Instance
from discovery.registry.async_registry import AsyncRegistry
from discovery.testing import eventually
from discovery_zookeeper import ZooKeeperBackend
from tests.backends.zookeeper_support import backend_url, expire_session_now, raw_client
from tests.harness import ServerHandle

pytestmark = pytest.mark.servers

CONVERGE = 15.0


def _instance(number: int, **fields: object) -> Instance:
    return Instance("svc", f"svc-{number}", "127.0.0.1", 30000 + number, **fields)  # type: ignore[arg-type]


def _zk(registry: AsyncRegistry) -> ZooKeeperBackend:
    backend = registry.backend
    assert isinstance(backend, ZooKeeperBackend)
    return backend


async def test_forced_expiry_restores_registrations_and_watchers_converge(zookeeper_server: ServerHandle) -> None:
    url = backend_url(zookeeper_server)
    async with await AsyncRegistry.connect(url) as owner, await AsyncRegistry.connect(url) as reader:
        registrations = [await owner.register(_instance(n)) for n in range(3)]
        async with reader.watch("svc") as watch, owner.watch("svc") as own_watch:
            await watch.until(lambda s: len(s) == 3, CONVERGE)
            old_session = await asyncio.to_thread(expire_session_now, zookeeper_server, _zk(owner))
            for registration in registrations:
                await registration.wait_for(RegistrationState.RESTORED, CONVERGE)
                assert RegistrationState.LOST in registration.history
                assert registration.history.index(RegistrationState.LOST) < registration.history.index(
                    RegistrationState.RESTORED
                )
            new_session = _zk(owner).session_id
            assert new_session is not None and new_session != old_session
            # The owner's own watcher lost its session too: it must re-list and come back fresh and complete.
            own = await own_watch.until(lambda s: len(s) == 3 and not s.stale, CONVERGE)
            seen = await watch.until(lambda s: len(s) == 3 and not s.stale, CONVERGE)
            assert own.same_members(seen)
        client = await asyncio.to_thread(raw_client, zookeeper_server)
        try:
            root = url.split("/", 3)[3].split("?")[0]
            for n in range(3):
                _, stat = await asyncio.to_thread(client.get, f"/{root}/default/svc/svc-{n}")
                assert stat.ephemeralOwner == new_session
        finally:
            await asyncio.to_thread(client.stop)
            await asyncio.to_thread(client.close)


async def test_register_takes_over_a_node_left_by_another_session(zookeeper_server: ServerHandle) -> None:
    url = backend_url(zookeeper_server)
    root = url.split("/", 3)[3].split("?")[0]
    stranger = await asyncio.to_thread(raw_client, zookeeper_server)
    try:
        path = f"/{root}/default/svc/svc-1"
        await asyncio.to_thread(stranger.create, path, b"{}", ephemeral=True, makepath=True)
        async with await AsyncRegistry.connect(url) as registry:
            instance = _instance(1)
            await registry.register(instance)
            _, stat = await asyncio.to_thread(stranger.get, path)
            assert stat.ephemeralOwner == _zk(registry).session_id
            assert await registry.instances("svc") == (instance,)
    finally:
        await asyncio.to_thread(stranger.stop)
        await asyncio.to_thread(stranger.close)


async def test_abort_leaves_nodes_until_session_expiry(zookeeper_server: ServerHandle) -> None:
    url = backend_url(zookeeper_server)
    async with await AsyncRegistry.connect(url) as reader:
        doomed = await AsyncRegistry.connect(url)
        await doomed.register(_instance(1))
        bound = doomed.detection_bound()
        started = time.monotonic()
        await doomed.close(deregister=False)
        # A CloseSession would have removed the node before close() returned; abort must not send one.
        assert [i.id for i in await reader.instances("svc")] == ["svc-1"]
        await eventually(lambda: reader.instances("svc"), lambda found: found == (), bound + 1.0)
        assert time.monotonic() - started > 0.5 * bound - 1.0


async def test_update_after_restore_is_written_under_the_new_session(zookeeper_server: ServerHandle) -> None:
    url = backend_url(zookeeper_server)
    async with await AsyncRegistry.connect(url) as owner:
        registration = await owner.register(_instance(1, labels={"gen": "1"}))
        await asyncio.to_thread(expire_session_now, zookeeper_server, _zk(owner))
        await registration.wait_for(RegistrationState.RESTORED, CONVERGE)
        updated = await registration.update(labels={"gen": "2"})
        found = await eventually(lambda: owner.instances("svc"), lambda f: f == (updated,), CONVERGE)
        assert found == (updated,)


async def _restart_case(fresh_server: Callable[[str], ServerHandle], *, wipe: bool) -> None:
    server = fresh_server("zookeeper")
    url = backend_url(server)
    async with await AsyncRegistry.connect(url) as owner, await AsyncRegistry.connect(url) as reader:
        registration = await owner.register(_instance(1))
        async with reader.watch("svc") as watch:
            await watch.until(lambda s: len(s) == 1, CONVERGE)
            server.kill()
            await watch.until(lambda s: s.stale, CONVERGE)
            if wipe:
                server.wipe_data()
            server.start()
            if wipe:
                # The server forgot the session: the registration is lost, then written again.
                await registration.wait_for(RegistrationState.RESTORED, CONVERGE * 2)
                assert RegistrationState.LOST in registration.history
            final = await watch.until(lambda s: not s.stale and s.ids() == {"svc-1"}, CONVERGE * 2)
            assert final.ids() == {"svc-1"}
        assert [i.id for i in await reader.instances("svc")] == ["svc-1"]


async def test_server_kill_and_restart_keeps_registration_and_resyncs_watch(
    fresh_server: Callable[[str], ServerHandle],
) -> None:
    await _restart_case(fresh_server, wipe=False)


async def test_server_kill_with_data_loss_restores_registration(
    fresh_server: Callable[[str], ServerHandle],
) -> None:
    await _restart_case(fresh_server, wipe=True)
