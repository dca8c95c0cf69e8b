"""ZooKeeper writes: concurrent creates share round trips (one ``multi`` each), and a transaction that cannot
succeed as a whole falls back to one-by-one writes with every registration still made."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import threading
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import Callback, ZnodeStat

from discovery.core.errors import BackendUnavailableError
from discovery.core.models import Instance, Status
from discovery.registry.async_registry import AsyncRegistry
from discovery.testing.conformance import left_in_reference_cycles
from discovery_zookeeper import ZooKeeperBackend
from discovery_zookeeper.bridge import LoopHandler, LoopWatcher, await_kazoo, settled_future
from discovery_zookeeper.connection import ZooKeeperSession
from discovery_zookeeper.keepalive import Created, EphemeralCreates
from discovery_zookeeper.watch import OwnCreates
from tests.backends.zookeeper_support import backend_url, raw_client
from tests.harness import ServerHandle
from tests.harness.specs import zk_four_letter_word

CONCURRENT = 64


def _instance(service: str, number: int) -> Instance:
    return Instance(service, f"{service}-{number}", "127.0.0.1", 30000 + number)


def _root(url: str) -> str:
    return url.split("/", 3)[3].split("?")[0]


def _last_zxid(server: ServerHandle) -> int:
    """The server's last transaction id, from ``srvr``: it moves once per write transaction (a create, or a whole
    ``multi``), never for a read or a ping, so the difference counts write round trips."""
    found = re.search(r"Zxid: 0x([0-9a-f]+)", zk_four_letter_word(server.host, server.port, b"srvr"))
    assert found, "ZooKeeper did not answer srvr"
    return int(found.group(1), 16)


def _owner(client: KazooClient, path: str) -> int:
    return int(client.get(path)[1].ephemeralOwner)


@pytest.mark.servers
async def test_concurrent_registrations_share_round_trips(zookeeper_server: ServerHandle) -> None:
    url = backend_url(zookeeper_server)
    async with await AsyncRegistry.connect(url) as registry:
        await registry.register(_instance("api", 999))  # the service's parent znode exists from here on
        before = await asyncio.to_thread(_last_zxid, zookeeper_server)
        await asyncio.gather(*(registry.register(_instance("api", n)) for n in range(CONCURRENT)))
        after = await asyncio.to_thread(_last_zxid, zookeeper_server)
        assert len(await registry.instances("api")) == CONCURRENT + 1
    # One create per registration was 64 write transactions; group commit sends a lone first one and then the rest
    # together. (Each registration also reads its znode once, an `exists` that arms its owner watch: reads are not
    # transactions, and kazoo pipelines them.)
    assert after - before <= 12, f"{after - before} write transactions for {CONCURRENT} concurrent registrations"


@pytest.mark.servers
async def test_the_owner_check_goes_out_behind_the_create_before_its_answer(
    zookeeper_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``exists`` that arms a registration's owner watch is sent right behind its create (the server answers a
    session's requests in order, so it sees the new node), not after the create's answer, where it queued in
    front of a registrant's next create. Ownership is still checked: see the conformance and fault suites. (With
    persistent watches, the default on 3.6+, no owner check is sent: test_zookeeper_persistent_watch.py.)"""
    events: list[str] = []
    send, reply = ZooKeeperSession.send, ZooKeeperSession.reply

    def sending(self: ZooKeeperSession, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        events.append(f"{what} sent")
        return send(self, what, call, *args, **kwargs)

    async def replied(self: ZooKeeperSession, what: str, async_result: Any) -> Any:
        try:
            return await reply(self, what, async_result)
        finally:
            events.append(f"{what} answered")

    url = backend_url(zookeeper_server, persistent_watches="false")
    async with await AsyncRegistry.connect(url, follow_records=False) as registry:
        await registry.register(_instance("api", 0))  # the service's parent exists from here on
        monkeypatch.setattr(ZooKeeperSession, "send", sending)
        monkeypatch.setattr(ZooKeeperSession, "reply", replied)
        await registry.register(_instance("api", 1))
        monkeypatch.undo()
    assert events[:3] == ["multi sent", "exists sent", "multi answered"], events


@pytest.mark.servers
async def test_a_transaction_that_fails_falls_back_and_registers_every_instance(
    zookeeper_server: ServerHandle,
) -> None:
    url = backend_url(zookeeper_server)
    stranger = await asyncio.to_thread(raw_client, zookeeper_server)
    taken = f"/{_root(url)}/default/api/api-3"
    try:
        # A node left by another session (as after our own expiry) makes the shared transaction fail as a whole.
        await asyncio.to_thread(stranger.create, taken, b"{}", ephemeral=True, makepath=True)
        async with await AsyncRegistry.connect(url) as registry:
            await registry.register(_instance("api", 100))
            await asyncio.gather(*(registry.register(_instance("api", n)) for n in range(10)))
            assert sorted(i.id for i in await registry.instances("api")) == sorted(
                [f"api-{n}" for n in range(10)] + ["api-100"]
            )
            backend = registry.backend
            assert isinstance(backend, ZooKeeperBackend)
            assert await asyncio.to_thread(_owner, stranger, taken) == backend.session_id
    finally:
        await asyncio.to_thread(stranger.stop)
        await asyncio.to_thread(stranger.close)


@pytest.mark.servers
async def test_first_concurrent_registrations_of_a_new_service_create_its_parent(
    zookeeper_server: ServerHandle,
) -> None:
    async with await AsyncRegistry.connect(backend_url(zookeeper_server)) as registry:
        await asyncio.gather(*(registry.register(_instance("fresh", n)) for n in range(20)))
        assert len(await registry.instances("fresh")) == 20


def test_a_reply_settles_its_future_without_kazoos_completion_thread() -> None:
    handler = LoopHandler()
    handler.start()
    release = threading.Event()
    handler.completion_queue.put(lambda: release.wait(10))  # kazoo's completion thread is busy from here on

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        late, early = handler.async_result(), handler.async_result()
        waiting, ready = loop.create_future(), loop.create_future()
        late.settle_on(loop, waiting)
        threading.Thread(target=late.set, args=("reply",)).start()  # as kazoo's connection thread does
        early.set_exception(KeyError("gone"))
        early.settle_on(loop, ready)  # set before anyone waits: settled at once
        results = [await asyncio.wait_for(waiting, 5)]
        with pytest.raises(KeyError):
            await ready
        return results

    try:
        assert asyncio.run(main()) == ["reply"]
    finally:
        release.set()
        handler.stop()


def test_a_loop_watcher_runs_without_kazoos_callback_thread() -> None:
    handler = LoopHandler()
    handler.start()
    release = threading.Event()
    handler.callback_queue.put(lambda: release.wait(10))  # kazoo's callback thread is busy from here on

    async def main() -> str:
        loop = asyncio.get_running_loop()
        heard: asyncio.Future[str] = loop.create_future()
        watcher = LoopWatcher(loop, heard.set_result)
        # As kazoo's connection thread does when a watch event arrives.
        threading.Thread(target=handler.dispatch_callback, args=(Callback("watch", watcher, ("event",)),)).start()
        return await asyncio.wait_for(heard, 5)

    try:
        assert asyncio.run(main()) == "event"
    finally:
        release.set()
        handler.stop()


class _ClosingSession:
    """A session whose client closes between a transaction and the owner checks sent behind it."""

    session_id = 0x1234

    def __init__(self) -> None:
        self.client = KazooClient(hosts="127.0.0.1:1")  # never started: only builds requests
        self.sent: list[str] = []

    def send(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(what)
        if what == "exists":
            raise BackendUnavailableError("ZooKeeper exists failed: ConnectionClosedError")
        return what

    async def reply(self, what: str, async_result: Any) -> Any:
        return [f"/created/{n}" for n in range(2)]


async def test_an_owner_check_that_cannot_be_sent_leaves_the_create_to_answer() -> None:
    session = _ClosingSession()
    creates = EphemeralCreates(session, LoopWatcher(asyncio.get_running_loop(), print))  # type: ignore[arg-type]
    created = await asyncio.gather(creates.create("/created/0", b"{}"), creates.create("/created/1", b"{}"))
    # The first create goes alone, the second in the next transaction; no owner check could be sent for either,
    # so each registration checks its owner the ordinary way once the create has answered.
    assert created == [Created(0x1234, None), Created(0x1234, None)]
    assert session.sent == ["multi", "exists", "multi", "exists"]


async def _watched(registry: AsyncRegistry, service: str) -> None:
    """Subscribe to ``service`` and wait for its first snapshot: its watch is open from here on."""
    shown = asyncio.Event()
    registry.subscribe(service, lambda snapshot: shown.set())
    await asyncio.wait_for(shown.wait(), 10)


def _gets_sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the path of every ``get`` any ZooKeeper session sends from here on."""
    paths: list[str] = []
    send = ZooKeeperSession.send

    def sending(self: ZooKeeperSession, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        if what == "get":
            paths.append(str(args[0]))
        return send(self, what, call, *args, **kwargs)

    monkeypatch.setattr(ZooKeeperSession, "send", sending)
    return paths


@pytest.mark.servers
async def test_a_registration_of_a_followed_service_is_not_read_back(
    zookeeper_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry follows the records of the services it registers in (a watch of each); the watch takes a node
    this backend created from its create instead of sending a ``get`` for it (one request fewer per registration)."""
    async with await AsyncRegistry.connect(backend_url(zookeeper_server)) as registry:
        await registry.register(_instance("api", 0))
        await _watched(registry, "api")  # as the follower's watch (one per service, shared)
        gets = _gets_sent(monkeypatch)
        await registry.register(_instance("api", 1))
        await asyncio.gather(*(registry.register(_instance("api", n)) for n in range(2, 40)))
        monkeypatch.undo()
        assert sorted(await registry.instances("api"), key=lambda i: i.port) == [_instance("api", n) for n in range(40)]
    assert gets == []  # one get per registration before: 39


@pytest.mark.servers
async def test_a_node_taken_from_its_create_and_changed_at_once_is_read_again(
    zookeeper_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch that took a node's data from its create has no data watch of its own on it: the owner watch's event
    has it read the node. Another process changes the status right after the registration; the watch shows it."""
    url = backend_url(zookeeper_server)
    async with await AsyncRegistry.connect(url) as registry, await AsyncRegistry.connect(url) as operator:
        await registry.register(_instance("api", 0))
        await _watched(registry, "api")
        gets = _gets_sent(monkeypatch)
        for n in range(1, 6):
            await registry.register(_instance("api", n))
            assert not any(path.endswith(f"/api-{n}") for path in gets), gets
            await operator.set_status("api", f"api-{n}", "DRAINING")
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                shown = {i.id: i.status for i in await registry.instances("api", statuses=None)}
                if shown.get(f"api-{n}") == Status.DRAINING:
                    break
                assert asyncio.get_running_loop().time() < deadline, f"the watch never showed api-{n}'s new status"
                await asyncio.sleep(0.01)
            assert any(path.endswith(f"/api-{n}") for path in gets), gets  # read once it changed
        monkeypatch.undo()


async def test_own_creates_vouch_only_for_a_create_its_owner_check_found_untouched() -> None:
    """An entry is usable only after the owner check found the node at version 0 under the creating session; an
    owner watch event, a failed create, or a node already changed leave the watch to read it."""
    own = OwnCreates()

    class _Stream:
        def __init__(self) -> None:
            self.changed: list[str] = []

        def node_changed(self, name: str) -> None:
            self.changed.append(name)

    stream = _Stream()
    own.open("/r/default/api", stream)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()

    def answered(version: int, owner: int) -> asyncio.Future[Any]:
        answer: asyncio.Future[Any] = loop.create_future()
        answer.set_result(ZnodeStat(0, 0, 0, 0, version, 0, 0, owner, 2, 0, 0))
        return answer

    own.sending("/elsewhere/x", b"unwatched")  # no stream watches that service: nothing kept
    own.checked("/elsewhere/x", 7, answered(0, 7))
    assert own.take("/elsewhere/x") is None

    for name in ("a", "b", "c", "d", "e"):
        own.sending(f"/r/default/api/{name}", name.encode())
    assert own.take("/r/default/api/a") is None  # sent, not yet vouched for
    own.checked("/r/default/api/a", 7, answered(0, 7))
    own.checked("/r/default/api/b", 7, answered(1, 7))  # someone set it before the watch was armed
    own.checked("/r/default/api/c", 7, answered(0, 8))  # another session holds it
    own.failed("/r/default/api/d")
    own.node_event("/r/default/api/e")  # changed after the send: read it
    own.checked("/r/default/api/e", 7, answered(0, 7))
    assert [own.take(f"/r/default/api/{name}") for name in "abcde"] == [b"a", None, None, None, None]
    assert own.take("/r/default/api/a") is None  # taken once
    assert stream.changed == ["e"]

    own.sending("/r/default/api/f", b"f")
    own.close("/r/default/api", stream)  # type: ignore[arg-type]
    own.checked("/r/default/api/f", 7, answered(0, 7))
    assert own.take("/r/default/api/f") is None  # the last stream of the service ended

    dropped = _Stream()
    own.open("/r/default/web", dropped)  # type: ignore[arg-type]
    del dropped  # collected without ending: its service has no stream left to take an entry
    gc.collect()
    own.sending("/r/default/web/g", b"g")
    own.checked("/r/default/web/g", 7, answered(0, 7))
    assert own.take("/r/default/web/g") is None


class _Watching:
    """Stands in for a watch of the service (:class:`OwnCreates` keeps creates only for a service watched)."""

    def node_changed(self, name: str) -> None:
        raise AssertionError(f"no owner watch event expected, got one for {name}")


class _AnsweredLaterSession:
    """A session whose requests the test answers by hand (kazoo results set as kazoo's connection thread would)."""

    session_id = 0x1234

    def __init__(self) -> None:
        self.client = KazooClient(hosts="127.0.0.1:1")  # never started: only builds requests
        self.handler = LoopHandler()
        self.requests: dict[str, Any] = {}

    def send(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        self.requests[what] = request = self.handler.async_result()
        return request

    async def reply(self, what: str, async_result: Any) -> Any:
        return await await_kazoo(async_result, 5, what)


async def test_a_create_is_vouched_for_when_its_owner_check_answers_in_one_burst_with_a_listing() -> None:
    """kazoo's connection thread reads the transaction's answer, the owner check's and a watch's listing of the
    new node in one go: by the time the watch goes on with its listing, the create is vouched for and the watch
    takes its data instead of reading the node back (before, the vouching waited for the transaction's caller to
    run on, which came after the watch: the watch sent a ``get``, seen once in CI)."""
    loop = asyncio.get_running_loop()
    session = _AnsweredLaterSession()
    own = OwnCreates()
    stream = _Watching()
    own.open("/r/default/api", stream)  # type: ignore[arg-type]
    creates = EphemeralCreates(session, LoopWatcher(loop, print), own)  # type: ignore[arg-type]
    registration = asyncio.create_task(creates.create("/r/default/api/a", b"a"))
    deadline = loop.time() + 5
    while "exists" not in session.requests:
        assert loop.time() < deadline, "the create and its owner check were never sent"
        await asyncio.sleep(0)
    listing = session.handler.async_result()

    async def watch_goes_on_with_its_listing() -> bytes | None:
        await settled_future(loop, listing)
        return own.take("/r/default/api/a")

    watch = asyncio.create_task(watch_goes_on_with_its_listing())
    await asyncio.sleep(0)  # the watch awaits its listing from here on
    # One burst, in the order the server answers: all three are handed to the loop before it runs on.
    session.requests["multi"].set(["/r/default/api/a"])
    session.requests["exists"].set(ZnodeStat(0, 0, 0, 0, 0, 0, 0, 0x1234, 1, 0, 0))
    listing.set(["a"])
    assert await asyncio.wait_for(watch, 5) == b"a"
    assert (await asyncio.wait_for(registration, 5)).session_id == 0x1234


@pytest.mark.servers
async def test_register_many_shares_round_trips(zookeeper_server: ServerHandle) -> None:
    async with await AsyncRegistry.connect(backend_url(zookeeper_server)) as registry:
        await registry.register(_instance("bulk", 999))  # the service's parent znode exists from here on
        before = await asyncio.to_thread(_last_zxid, zookeeper_server)
        await registry.register_many([_instance("bulk", n) for n in range(CONCURRENT)])
        after = await asyncio.to_thread(_last_zxid, zookeeper_server)
        assert len(await registry.instances("bulk")) == CONCURRENT + 1
    assert after - before <= 12, f"{after - before} write transactions for a batch of {CONCURRENT}"



def test_a_failed_request_leaves_no_reference_cycle() -> None:
    """A failed request (a read of a node just deleted: NoNodeError) raises out of the future that awaited it; the
    future held the error, whose traceback held the frame that awaited the future: one reference cycle per failed
    request, freed only by the cyclic collector (a registry following a busy service left 238 errors with their
    tracebacks, frames and futures in cycles for 300 registrations made and deregistered)."""
    handler = LoopHandler()
    handler.start()

    async def main() -> list[str]:
        async def fail(first: int, count: int) -> None:
            for _ in range(count):
                result = handler.async_result()
                result.set_exception(NoNodeError())
                with contextlib.suppress(NoNodeError):
                    await await_kazoo(result, 5.0, "a read")

        return await left_in_reference_cycles(fail, (BaseException, asyncio.Future))

    try:
        assert asyncio.run(main()) == []
    finally:
        handler.stop()
