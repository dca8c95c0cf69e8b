"""How a ZooKeeper watch stream reads nodes: on a scripted session, so the order of requests and answers is exact.
(What it reads, on real servers: the conformance, watch-stream and fault suites.)"""

from __future__ import annotations

import asyncio
from typing import Any

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType, KeeperState, WatchedEvent, ZnodeStat

from discovery.core.errors import BackendUnavailableError
from discovery.core.models import Instance, Status
from discovery_zookeeper.connection import SessionEvent, ZooKeeperSession
from discovery_zookeeper.records import encode_record
from discovery_zookeeper.watch import ServiceWatch

PATH = "/r/default/api"
STAT = ZnodeStat(0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0)


class _ScriptedSession:
    """Answers ``get_children`` from ``children`` and ``get`` from ``nodes``; records every send and answer, and
    keeps the watcher each read armed, per path, as kazoo does."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.client = self  # the stream names kazoo's *_async calls through the client; only their names matter
        self.children: list[str] = []
        self.nodes: dict[str, bytes] = {}
        self.events: list[str] = []
        self.watchers: dict[str, Any] = {}

    persistent_watches = False  # a server before 3.6: the stream follows the service with one-shot watches

    def remove_persistent_watch(self, path: str, watcher: Any) -> None:
        pass

    def add_listener(self, listener: Any) -> None:
        pass

    def remove_listener(self, listener: Any) -> None:
        pass

    def get_children_async(self) -> None: ...

    def get_async(self) -> None: ...

    def exists_async(self) -> None: ...

    def send(self, what: str, call: Any, path: str, watcher: Any = None) -> tuple[str, str]:
        self.events.append(f"{what} sent")
        self.watchers[path] = watcher
        return what, path

    async def reply(self, what: str, request: tuple[str, str]) -> Any:
        await asyncio.sleep(0)  # an answer comes from elsewhere, later
        self.events.append(f"{what} answered")
        _, path = request
        if what == "get_children":
            return list(self.children)
        if path not in self.nodes:
            raise NoNodeError(path)
        return self.nodes[path], STAT

    async def request(self, what: str, call: Any, *args: Any) -> Any:
        return await self.reply(what, self.send(what, call, *args))

    get_many = ZooKeeperSession.get_many  # the real one, over the scripted send and reply

    def put(self, name: str, status: Status) -> None:
        instance = Instance("api", name, "127.0.0.1", 8080, status=status)
        self.nodes[f"{PATH}/{name}"] = encode_record(instance, payload_class=None, registered_at_ms=1)


async def test_changed_nodes_are_read_with_every_get_sent_before_the_first_answer() -> None:
    session = _ScriptedSession()
    session.children = ["a", "b", "c"]
    for name in session.children:
        session.put(name, Status.UP)
    stream = ServiceWatch(session, PATH, "default", "api")  # type: ignore[arg-type]
    first = await anext(stream)
    assert [i.status for i in first.instances] == [Status.UP] * 3
    assert session.events == ["get_children sent", "get_children answered"] + ["get sent"] * 3 + ["get answered"] * 3

    session.events.clear()
    for name in session.children:  # three nodes change at once: their data watches fire
        session.put(name, Status.DRAINING)
        session.watchers[f"{PATH}/{name}"](WatchedEvent(EventType.CHANGED, KeeperState.CONNECTED, f"{PATH}/{name}"))
    second = await asyncio.wait_for(anext(stream), 5)
    assert [i.status for i in second.instances] == [Status.DRAINING] * 3
    # One round trip for the three, not three in a row (before: sent, answered, sent, answered, sent, answered).
    assert session.events == ["get sent"] * 3 + ["get answered"] * 3
    await stream.aclose()


async def test_a_node_gone_between_the_listing_and_its_read_is_left_out() -> None:
    session = _ScriptedSession()
    session.children = ["a", "b"]
    session.put("a", Status.UP)  # "b" is listed but deleted before its get
    stream = ServiceWatch(session, PATH, "default", "api")  # type: ignore[arg-type]
    first = await anext(stream)
    assert [i.id for i in first.instances] == ["a"]
    await stream.aclose()


class _DroppingSession(_ScriptedSession):
    """A scripted session whose connection drops while a ``get`` is answered, as kazoo reports it: the session
    event first, then the request's connection error."""

    def __init__(self) -> None:
        super().__init__()
        self.listeners: list[Any] = []
        self.drop_at_next_get = False

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: Any) -> None:
        self.listeners.remove(listener)

    def tell(self, event: SessionEvent) -> None:
        if event is SessionEvent.SUSPENDED:
            self.connected.clear()
        else:
            self.connected.set()
        for listener in list(self.listeners):
            listener(event)

    async def reply(self, what: str, request: tuple[str, str]) -> Any:
        if what == "get" and self.drop_at_next_get:
            self.drop_at_next_get = False
            self.tell(SessionEvent.SUSPENDED)
            raise BackendUnavailableError("ZooKeeper get failed: ConnectionLoss")
        return await super().reply(what, request)


async def test_a_connection_dropped_during_a_read_makes_the_snapshot_stale_until_the_read_is_done_again() -> None:
    """A stream reading a changed node when the connection drops reports a stale snapshot at once, not a
    fresh-looking one for the whole disconnection (the fault suite's read-your-writes check on ZooKeeper caught the
    stream waiting for the connection inside its read), and reads the node once the connection is back."""
    session = _DroppingSession()
    session.children = ["a"]
    session.put("a", Status.UP)
    stream = ServiceWatch(session, PATH, "default", "api")  # type: ignore[arg-type]
    try:
        first = await anext(stream)
        assert not first.stale
        session.put("a", Status.DRAINING)
        session.drop_at_next_get = True
        session.watchers[f"{PATH}/a"](WatchedEvent(EventType.CHANGED, KeeperState.CONNECTED, f"{PATH}/a"))
        during = await asyncio.wait_for(anext(stream), 5)
        assert during.stale and [i.status for i in during.instances] == [Status.UP]
        session.tell(SessionEvent.RECONNECTED)
        after = await asyncio.wait_for(anext(stream), 5)
        assert not after.stale and [i.status for i in after.instances] == [Status.DRAINING]
    finally:
        await stream.aclose()
