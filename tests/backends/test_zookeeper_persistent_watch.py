"""ZooKeeper streams on a persistent recursive watch (3.6+): the service is listed once, each change costs at most a
read of the node it names, a registration's own watch shows it without a listing or a read, the watch is armed
again after a reconnect and removed with its last stream, and a server without ``addWatch`` is followed with
one-shot watches (all on real servers; the order of events against a listing, on a scripted session)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kazoo.exceptions import NoWatcherError
from kazoo.protocol.states import EventType, KeeperState, WatchedEvent

from discovery.core.backend import LostReason, RegistrationState
from discovery.core.models import Instance, Snapshot, Status
from discovery.registry.async_registry import AsyncRegistry
from discovery_zookeeper import persistent
from discovery_zookeeper.connection import ZooKeeperSession
from discovery_zookeeper.records import encode_record
from discovery_zookeeper.watch import ServiceWatch
from tests.backends.zookeeper_support import backend_url, raw_client, requests_sent
from tests.harness import ServerHandle
from tests.harness.relay import Relay

SETTLE = 10.0


def _instance(service: str, number: int, **changes: Any) -> Instance:
    return Instance(service, f"{service}-{number}", "127.0.0.1", 9000 + number, **changes)


async def _shown(watch: Any, wanted: Any) -> Snapshot:
    snapshot: Snapshot = await watch.until(wanted, SETTLE)
    return snapshot


@pytest.mark.servers
async def test_a_stream_lists_its_service_once_and_reads_only_the_nodes_events_name(
    zookeeper_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = backend_url(zookeeper_server)
    async with await AsyncRegistry.connect(url, follow_records=False) as reader, \
            await AsyncRegistry.connect(url) as writer:
        sent = requests_sent(monkeypatch)
        async with reader.watch("api") as watch:
            await _shown(watch, lambda s: s.ids() == set())
            assert reader.backend.persistent_watches is True  # ZooKeeper 3.8 and 3.9 have them
            listed = sent.count("get_children")
            handles = [await writer.register(_instance("api", n)) for n in range(6)]
            await _shown(watch, lambda s: len(s) == 6)
            await writer.set_status("api", "api-2", "DRAINING")
            await _shown(watch, lambda s: s.get("api-2") is not None and s.get("api-2").status is Status.DRAINING)
            await handles[0].deregister()
            await handles[1].deregister()
            shown = await _shown(watch, lambda s: s.ids() == {f"api-{n}" for n in range(2, 6)})
        monkeypatch.undo()
    assert shown.get("api-3") == _instance("api", 3)
    # One listing by the reader's stream when it opened, one by the writer's when it first registered (it follows
    # its own records). With one-shot watches the reader listed the service again on every change (9 more here).
    assert listed == 1 and sent.count("get_children") == 2, sent


@pytest.mark.servers
async def test_a_registration_costs_one_request_and_is_shown_by_its_own_watch(
    zookeeper_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backend arms a persistent watch on each service it registers in before the first create: every change
    after a create is an event, so no owner check is sent; the registry follows the services it registers in, and
    its stream, hearing the create before the create's answer, takes the record from the create: read-your-writes
    costs no request either (before: an ``exists`` per registration, and a listing of the whole service)."""
    async with await AsyncRegistry.connect(backend_url(zookeeper_server)) as registry:
        await registry.register(_instance("own", 0))
        seen: list[Snapshot] = []
        unsubscribe = registry.subscribe("own", seen.append)
        async with asyncio.timeout(SETTLE):
            while not seen:
                await asyncio.sleep(0.01)
        sent = requests_sent(monkeypatch)
        for n in range(1, 21):
            await registry.register(_instance("own", n))
            assert seen and f"own-{n}" in seen[-1].ids()  # read-your-writes: the subscriber has it already
        monkeypatch.undo()
        await unsubscribe()
        assert sorted(await registry.instances("own"), key=lambda i: i.port) == [_instance("own", n) for n in range(21)]
    assert sent == ["multi"] * 20, sent


def _delete_as_operator(server: ServerHandle, path: str) -> None:
    client = raw_client(server)
    try:
        client.delete(path)
    finally:
        client.stop()
        client.close()


@pytest.mark.servers
async def test_a_registration_under_the_persistent_watch_is_still_written_back_and_taken_over(
    zookeeper_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No owner check is sent for a registration its service's persistent watch covers; the watch's events stand
    in for it: a node an operator deletes is written back, one another registrant takes is given up."""
    url = backend_url(zookeeper_server)
    async with await AsyncRegistry.connect(url) as registry, await AsyncRegistry.connect(url) as newcomer:
        first = await registry.register(_instance("cov", 0))  # creates the service's znode (checked the usual way)
        sent = requests_sent(monkeypatch)
        removed = await registry.register(_instance("cov", 1))
        taken = await registry.register(_instance("cov", 2))
        monkeypatch.undo()
        assert sent.count("multi") == 2 and "exists" not in sent, sent  # no owner check (the rest: the follower)
        bound = first.detection_bound + 1.0
        root = registry.backend.config.root
        await asyncio.to_thread(_delete_as_operator, zookeeper_server, f"{root}/default/cov/cov-1")
        await removed.wait_for(RegistrationState.RESTORED, bound)
        await newcomer.register(_instance("cov", 2, weight=5))
        await taken.wait_for(RegistrationState.LOST, bound)
        assert taken.lost_reason is LostReason.TAKEN_OVER
        assert removed.history == (RegistrationState.REGISTERED, RegistrationState.LOST, RegistrationState.RESTORED)
        shown = {i.id: i.weight for i in await newcomer.backend.list("default", "cov")}
        assert shown == {"cov-0": 1, "cov-1": 1, "cov-2": 5}


@pytest.mark.servers
async def test_after_a_reconnect_a_registration_is_covered_again(
    zookeeper_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server forgets the persistent watch with the connection: the next registration arms it again (one
    ``addWatch``) before its create, and the watch then reports an operator's deletion of it."""
    with Relay(zookeeper_server.host, zookeeper_server.port) as relay:
        url = backend_url(zookeeper_server).replace(f"{zookeeper_server.host}:{zookeeper_server.port}", relay.address)
        async with await AsyncRegistry.connect(url, follow_records=False) as registry:
            first = await registry.register(_instance("back", 0))

            def usable() -> bool:
                status = registry.connection
                return status is not None and status.state.usable

            relay.cut()
            async with asyncio.timeout(SETTLE):
                while usable():
                    await asyncio.sleep(0.01)
            relay.pass_through()
            async with asyncio.timeout(SETTLE):
                while not usable():
                    await asyncio.sleep(0.01)
            sent = requests_sent(monkeypatch)
            again = await registry.register(_instance("back", 1))
            monkeypatch.undo()
            assert sent == ["addWatch", "multi"], sent
            root = registry.backend.config.root
            await asyncio.to_thread(_delete_as_operator, zookeeper_server, f"{root}/default/back/back-1")
            await again.wait_for(RegistrationState.RESTORED, first.detection_bound + 1.0)


@pytest.mark.servers
async def test_the_watch_is_removed_with_its_last_stream(zookeeper_server: ServerHandle) -> None:
    url = backend_url(zookeeper_server)
    async with await AsyncRegistry.connect(url, follow_records=False) as reader, \
            await AsyncRegistry.connect(url) as writer:
        backend: Any = reader.backend
        session = backend.session_for_tests()
        assert session is not None
        path = f"{backend.config.root}/default/gone"
        first, second = backend.watch("default", "gone"), backend.watch("default", "gone")
        await anext(first)
        await anext(second)
        await first.aclose()
        await writer.register(_instance("gone", 1))
        assert [i.id for i in (await asyncio.wait_for(anext(second), SETTLE)).instances] == ["gone-1"]
        await second.aclose()
        # The server no longer holds a watch on the path: removing one now is refused.
        with pytest.raises(NoWatcherError):
            await session.reply("removeWatches", persistent.send(
                session.client, persistent.RemoveWatches(path, persistent.WATCHER_TYPE_ANY)))


@pytest.mark.servers
async def test_the_watch_is_armed_again_after_a_reconnect(zookeeper_server: ServerHandle) -> None:
    with Relay(zookeeper_server.host, zookeeper_server.port) as relay:
        url = backend_url(zookeeper_server)
        through_relay = url.replace(f"{zookeeper_server.host}:{zookeeper_server.port}", relay.address)
        async with await AsyncRegistry.connect(through_relay, follow_records=False) as reader, \
                await AsyncRegistry.connect(url) as writer, reader.watch("again") as watch:
            await writer.register(_instance("again", 1))
            await _shown(watch, lambda s: s.ids() == {"again-1"})
            relay.cut()  # the connection drops; the server forgets the watch with it
            await _shown(watch, lambda s: s.stale)
            relay.pass_through()  # kazoo reconnects the same session
            await _shown(watch, lambda s: not s.stale)
            await writer.register(_instance("again", 2))  # only a watch armed again reports it
            await _shown(watch, lambda s: s.ids() == {"again-1", "again-2"})


@pytest.mark.servers
async def test_a_connection_dropped_while_the_stream_reads_a_change_makes_it_stale(
    zookeeper_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops (reset) just as the stream reads the node an event named: the watch shows a stale
    snapshot while the server cannot be reached, and the change once it can (the fault suite's read-your-writes
    check found a fresh-looking snapshot without an acknowledged update for a whole partition)."""
    with Relay(zookeeper_server.host, zookeeper_server.port) as relay:
        url = backend_url(zookeeper_server)
        through_relay = url.replace(f"{zookeeper_server.host}:{zookeeper_server.port}", relay.address)
        async with await AsyncRegistry.connect(through_relay, follow_records=False) as reader, \
                await AsyncRegistry.connect(url) as writer, reader.watch("mid") as watch:
            registration = await writer.register(_instance("mid", 1))
            await _shown(watch, lambda s: s.ids() == {"mid-1"})
            backend: Any = reader.backend
            reading = backend.session_for_tests()
            get_many = ZooKeeperSession.get_many

            async def cut_first(self: ZooKeeperSession, paths: list[str], watcher: Any = None) -> Any:
                if self is reading:
                    monkeypatch.undo()
                    relay.cut()  # the reads below go out on a connection that is being reset
                return await get_many(self, paths, watcher)

            monkeypatch.setattr(ZooKeeperSession, "get_many", cut_first)
            await registration.update(weight=2)
            await _shown(watch, lambda s: s.stale)
            relay.pass_through()
            shown = await _shown(watch, lambda s: not s.stale and s.get("mid-1") is not None)
            assert shown.get("mid-1").weight == 2  # type: ignore[union-attr]


@pytest.mark.servers
async def test_a_server_without_persistent_watches_is_followed_with_one_shot_watches(
    zookeeper_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before 3.6 ZooKeeper answers ``addWatch`` with ``UnimplementedException`` and closes the connection
    (ZOOKEEPER-1495); an opcode no server knows makes this one answer the same."""
    monkeypatch.setattr(persistent.AddWatch, "type", 4242)
    async with await AsyncRegistry.connect(backend_url(zookeeper_server)) as registry:
        await registry.register(_instance("old", 1))
        async with registry.watch("old") as watch:
            await _shown(watch, lambda s: not s.stale and s.ids() == {"old-1"})
            assert registry.backend.persistent_watches is False
            await registry.register(_instance("old", 2))
            await _shown(watch, lambda s: s.ids() == {"old-1", "old-2"})


class _ListingSession:
    """A session on a server with persistent watches whose listing answers after events the test fires."""

    persistent_watches = True

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.client = self
        self.children: list[str] = []
        self.nodes: dict[str, bytes] = {}
        self.watcher: Any = None
        self.while_listing: list[tuple[EventType, str]] = []

    def add_listener(self, listener: Any) -> None:
        pass

    def remove_listener(self, listener: Any) -> None:
        pass

    def send_persistent_watch(self, path: str, watcher: Any) -> str:
        self.watcher = watcher
        return "addWatch"

    async def persistent_watch_armed(self, request: str) -> bool:
        return True

    def remove_persistent_watch(self, path: str, watcher: Any) -> None:
        pass

    def get_children_async(self) -> None: ...

    def send(self, what: str, call: Any, path: str, *args: Any) -> str:
        assert what == "get_children"
        return path

    async def reply(self, what: str, path: str) -> Any:
        listing = list(self.children)  # what the server listed, before the events below (which come after it)
        for kind, name in self.while_listing:
            self.watcher(WatchedEvent(kind, KeeperState.CONNECTED, f"{path}/{name}"))
        await asyncio.sleep(0.01)  # the events are handed to the loop before the listing's answer is read
        return listing

    async def get_many(self, paths: list[str], watcher: Any = None) -> list[bytes | None]:
        await asyncio.sleep(0)
        return [self.nodes.get(path) for path in paths]

    def put(self, name: str) -> None:
        self.nodes[f"/r/default/api/{name}"] = encode_record(
            Instance("api", name, "127.0.0.1", 8080), payload_class=None, registered_at_ms=1)


async def test_events_that_arrive_while_the_service_is_listed_are_applied_on_top_of_the_listing() -> None:
    session = _ListingSession()
    session.children = ["a", "b", "c"]
    for name in ("a", "b", "c", "d"):
        session.put(name)
    # After the server listed a, b, c: b deleted, d created, c deleted and created again.
    session.while_listing = [(EventType.DELETED, "b"), (EventType.CREATED, "d"), (EventType.DELETED, "c"),
                             (EventType.CREATED, "c")]
    del session.nodes["/r/default/api/b"]
    stream = ServiceWatch(session, "/r/default/api", "default", "api")  # type: ignore[arg-type]
    try:
        first = await asyncio.wait_for(anext(stream), SETTLE)
    finally:
        await stream.aclose()
    assert first.ids() == {"a", "c", "d"}
