"""A snapshot stream per ``watch()`` call, from a persistent recursive ZooKeeper watch (or one-shot watches).

A :class:`ServiceWatch` is what ``ZooKeeperBackend.watch`` returns: an async iterator of full snapshots, driven by
its consumer (the registry's watch hub, which shares it among every subscriber of the service; there is no
sharing here).

On ZooKeeper 3.6+ the stream arms one persistent recursive watch on the service directory
(:mod:`discovery_zookeeper.persistent`) and lists it right behind: every node created, changed or deleted below it is
reported by path, so the stream re-reads only the node an event names (a deleted one too: a takeover deletes and
creates it in one transaction, and the read finds the new record) and never lists the service again until a
reconnect. Events that arrive while the listing is answered are applied on top of it,
the newest per node winning (one connection delivers events and answers in the server's order).

Before 3.6 (the server has no ``addWatch``), the stream re-arms one-shot watches as it reads: a children watch on
the service directory (or an ``exists`` watch while it does not exist yet) and a data watch on each instance
znode; kazoo drops every one-shot watch when the connection is suspended. Watch callbacks only mark what is dirty
and wake the stream; the stream then re-reads just that (new/removed children, changed nodes). After any reconnect
it arms its watch again and re-lists everything, after a small random delay so that many watchers do not hit the
server at once.

A znode this backend's own registrations just created is not read back (:class:`OwnCreates`): the stream takes
its data from the create, and the owner watch the registration arms on it stands in for the stream's data watch
until the first change, which the stream then reads as any other. With a persistent watch, the event of the create
arrives before the create's answer: the stream waits until :class:`OwnCreates` knows whether it may use the create
(at its answer when the registration's own persistent watch covers it, else at its owner check, sent right behind
it) instead of reading the node, so a registration's own watch shows it without another round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from weakref import WeakSet

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from discovery.core.errors import BackendUnavailableError, ValidationError
from discovery.core.foreign import log_skipped
from discovery.core.models import Instance, Snapshot
from discovery_zookeeper.bridge import LoopWatcher
from discovery_zookeeper.connection import SessionEvent, ZooKeeperSession
from discovery_zookeeper.records import decode_record

logger = logging.getLogger("discovery.backends.zookeeper.watch")

#: Upper bound of the random delay before re-listing after a reconnect (spreads a herd of watchers).
RESYNC_JITTER = 0.25

#: Creates an :class:`OwnCreates` holds at most; past it a create is read back as any other node.
OWN_CREATES_MAX = 4096

#: How long a stream waits to learn whether it may use a create it heard of before reading the node instead (the
#: create's answer, or its owner check sent right behind it, normally comes at once).
OWN_CREATE_WAIT = 2.0


class OwnCreates:
    """Znodes this backend's registrations are creating, told to the open :class:`ServiceWatch` streams of their
    service, which take the data from here instead of reading each node back (one ``get`` fewer per registration
    of a watched service: the registry follows the services it registers in, so that is every registration).

    An entry is taken only once the create succeeded *and* the owner check sent right behind it (an ``exists``
    with the owner watch, :class:`discovery_zookeeper.keepalive.EphemeralCreates`) found the node at version 0
    under the creating session: nothing changed it before that watch was armed, and every change after fires the
    owner watch, whose events come to :meth:`node_event`: the entry is dropped and the streams read the node.
    Entries exist only for services with an open stream, and a full re-list of a stream drops them all.
    """

    def __init__(self) -> None:
        self._streams: dict[str, WeakSet[ServiceWatch]] = {}
        self._pending: dict[str, bytes] = {}  # path -> data: sent, not yet known to be usable
        self._usable: dict[str, bytes] = {}
        self._settled: dict[str, asyncio.Future[None]] = {}  # path -> done once its pending entry is decided

    def open(self, directory: str, stream: ServiceWatch) -> None:
        """``stream`` watches ``directory`` (a service's znode) from now on."""
        self._streams.setdefault(directory, WeakSet()).add(stream)

    def close(self, directory: str, stream: ServiceWatch) -> None:
        """``stream`` ended: creates in ``directory`` are no longer kept for it."""
        streams = self._streams.get(directory)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._streams[directory]
                self.drop_directory(directory)

    def sending(self, path: str, data: bytes) -> None:
        """A create of ``path`` with ``data`` is about to be sent."""
        directory = path.rpartition("/")[0]
        # A stream dropped without ending (collected) leaves an empty set behind: nothing would take the entry.
        if self._streams.get(directory) and len(self._pending) + len(self._usable) < OWN_CREATES_MAX:
            self._pending[path] = data
            self._usable.pop(path, None)

    def settled(self, path: str) -> asyncio.Future[None] | None:
        """A future done once the create of ``path`` sent last is known usable or not; ``None`` if none is pending."""
        if path not in self._pending:
            return None
        waiter = self._settled.get(path)
        if waiter is None:
            waiter = self._settled[path] = asyncio.get_running_loop().create_future()
        return waiter

    def _decided(self, path: str) -> None:
        waiter = self._settled.pop(path, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def made(self, path: str) -> None:
        """The create of ``path`` succeeded under a persistent watch armed before it was sent (every change after it
        is an event that comes to :meth:`node_event`): the entry is usable."""
        data = self._pending.pop(path, None)
        if data is not None:
            self._usable[path] = data
        self._decided(path)

    def failed(self, path: str) -> None:
        """The create of ``path`` did not succeed (or cannot be vouched for)."""
        self._pending.pop(path, None)
        self._decided(path)

    def checked(self, path: str, session_id: int | None, answer: asyncio.Future[Any]) -> None:
        """The owner check behind a create that succeeded answered: the entry is usable if it shows the node as
        created (version 0) by ``session_id``."""
        stat = None if answer.cancelled() or answer.exception() is not None else answer.result()
        if stat is not None and stat.version == 0 and stat.ephemeralOwner == session_id:
            self.made(path)
        else:
            self.failed(path)

    def node_event(self, path: str) -> None:
        """The owner watch fired on ``path``: its data (if kept) is no longer known; streams that took it read it."""
        self._pending.pop(path, None)
        self._usable.pop(path, None)
        self._decided(path)
        directory, _, name = path.rpartition("/")
        for stream in list(self._streams.get(directory, ())):
            stream.node_changed(name)

    def take(self, path: str) -> bytes | None:
        """The data a create wrote at ``path``, once, if usable (see the class docs); ``None``: read the node."""
        return self._usable.pop(path, None)

    def drop_directory(self, directory: str) -> None:
        """Forget every entry under ``directory`` (a stream re-lists it, or none watches it any more)."""
        prefix = directory + "/"
        for entries in (self._pending, self._usable):
            for path in [path for path in entries if path.startswith(prefix)]:
                del entries[path]
        for path in [path for path in self._settled if path.startswith(prefix)]:
            self._decided(path)


class ServiceWatch(AsyncIterator[Snapshot]):
    """The snapshot stream of one ``watch(namespace, service)`` call: the current set, then one per change,
    stale while disconnected, until :meth:`stop` or ``aclose()``.
    """

    def __init__(
        self, session: ZooKeeperSession, path: str, namespace: str, service: str, own_creates: OwnCreates | None = None
    ) -> None:
        self._session = session
        self._own_creates = own_creates
        self._path = path
        self._namespace = namespace
        self._service = service
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._members: dict[str, Instance | None] = {}
        self._children_dirty = False
        self._dirty_nodes: set[str] = set()
        # Members whose data came from OwnCreates: no data watch of ours on them (the owner watch stands in).
        self._unwatched: set[str] = set()
        self._full_resync = True
        self._disconnected = False
        self._stopped = False
        self._stop_requested = asyncio.Event()
        self._revision = 0
        # One object each, handed to kazoo on every read: kazoo keeps a set of watchers per path.
        self._watch_children = LoopWatcher(self._loop, self._children_event)
        self._watch_node = LoopWatcher(self._loop, self._node_event)
        self._watch_below = LoopWatcher(self._loop, self._event_below)
        #: Whether a persistent recursive watch follows the service (else one-shot watches).
        self._persistent = False
        #: While the service is listed under a persistent watch: the newest event of each node meanwhile.
        self._events_while_listing: dict[str, EventType] | None = None
        self._snapshots = self._stream()

    async def __anext__(self) -> Snapshot:
        return await anext(self._snapshots)

    async def aclose(self) -> None:
        """End the stream (its watches are left to fire once, unanswered)."""
        await self._snapshots.aclose()

    def stop(self) -> None:
        """End the stream (the backend is closing)."""
        self._stopped = True
        self._stop_requested.set()
        self._wake.set()

    async def _stream(self) -> AsyncGenerator[Snapshot, None]:
        self._session.add_listener(self._on_session_event)
        if self._own_creates is not None:
            self._own_creates.open(self._path, self)
        try:
            await self._sync_until_done()
            if self._stopped:
                return
            yield self._snapshot(stale=False)
            last = self._members_tuple()
            stale_sent = False
            while not self._stopped:
                await self._wake.wait()
                self._wake.clear()
                if self._stopped:
                    break
                if self._disconnected:
                    if not stale_sent:
                        stale_sent = True
                        yield self._snapshot(stale=True)
                    continue
                if self._full_resync:
                    await asyncio.sleep(random.uniform(0, RESYNC_JITTER))
                # Not across a disconnect: a read the drop interrupted is read again after the reconnect, and the
                # snapshot meanwhile is stale (waiting here for the connection, it would stay fresh-looking).
                await self._sync_until_done(until_disconnected=True)
                if self._stopped:
                    break
                if self._disconnected or not self._session.connected.is_set():
                    continue
                current = self._members_tuple()
                if current != last or stale_sent:
                    last, stale_sent = current, False
                    yield self._snapshot(stale=False)
        finally:
            self._stopped = True
            self._session.remove_listener(self._on_session_event)
            self._session.remove_persistent_watch(self._path, self._watch_below)
            if self._own_creates is not None:
                self._own_creates.close(self._path, self)
            for watcher in (self._watch_children, self._watch_node, self._watch_below):
                watcher.disarm()

    # -- events (callbacks from kazoo threads are forwarded to the loop) ------------------------------------------

    def _on_session_event(self, event: SessionEvent) -> None:
        if event in (SessionEvent.SUSPENDED, SessionEvent.EXPIRED):
            self._disconnected = True
        else:
            self._disconnected = False
            self._full_resync = True
        self._wake.set()

    def _children_event(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or self._stopped:
            return  # connection state; the session listener handles it
        self._children_dirty = True
        self._wake.set()

    def _node_event(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or self._stopped or event.path is None:
            return
        self._dirty_nodes.add(event.path.rsplit("/", 1)[-1])
        self._wake.set()

    def _event_below(self, event: WatchedEvent) -> None:
        """The persistent watch reported a node below the service: a member created, changed or deleted."""
        if event.type == EventType.NONE or self._stopped or event.path is None:
            return
        directory, _, name = event.path.rpartition("/")
        if directory != self._path:
            return  # the service's own znode (its children's events tell what matters)
        if self._events_while_listing is not None:
            self._events_while_listing[name] = event.type
        if event.type == EventType.DELETED:
            if name not in self._members:
                return
            # Read, not dropped: a takeover deletes and creates the node in one transaction, and its previous
            # owner's record must never look missing (the read finds the new one; a plain deletion, nothing).
        else:
            self._members.setdefault(name, None)  # a new member is read (or taken from its create) by _sync
        self._dirty_nodes.add(name)
        self._wake.set()

    def node_changed(self, name: str) -> None:
        """The owner watch of a node this backend created fired (:class:`OwnCreates`): read it if its data came
        from the create (for the others, our own data watch fires too)."""
        if name in self._unwatched and not self._stopped:
            self._unwatched.discard(name)
            self._dirty_nodes.add(name)
            self._wake.set()

    # -- reading -------------------------------------------------------------------------------------------------

    async def _sync_until_done(self, *, until_disconnected: bool = False) -> None:
        """Apply pending changes, retrying with jittered backoff while the server does not answer; with
        ``until_disconnected``, give up once the connection is gone (the next session event wakes the stream)."""
        if self._session.connected.is_set() and not self._stopped:
            try:
                await self._sync()  # the common case, without building a retry loop per change
                return
            except BackendUnavailableError:
                pass
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(BackendUnavailableError),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            reraise=True,
        ):
            with attempt:
                if until_disconnected and (self._disconnected or not self._session.connected.is_set()):
                    return
                if not await self._connected_unless_stopped():
                    return
                await self._sync()

    async def _connected_unless_stopped(self) -> bool:
        """Wait for a connection; False if the stream was stopped first."""
        if self._stopped:
            return False
        if not self._session.connected.is_set():
            waiters = {asyncio.ensure_future(self._session.connected.wait()),
                       asyncio.ensure_future(self._stop_requested.wait())}
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        return not self._stopped

    async def _sync(self) -> None:
        if self._full_resync:
            self._full_resync = False
            self._children_dirty = True
            self._dirty_nodes = set(self._members)
            self._unwatched.clear()
            if self._own_creates is not None:
                self._own_creates.drop_directory(self._path)
        try:
            if self._children_dirty:
                self._children_dirty = False
                await self._read_children()
            while self._dirty_nodes:
                names = sorted(name for name in self._dirty_nodes if name in self._members)
                self._dirty_nodes.clear()  # an event during the reads below marks its node again
                if self._persistent and self._own_creates is not None:
                    names = await self._take_own_creates_once_checked(names)
                for name, value in zip(names, await self._read_nodes(names), strict=True):
                    if name not in self._members:
                        continue
                    if value is None and self._persistent and name not in self._dirty_nodes:
                        del self._members[name]  # gone; the watch reports it if it comes back
                        self._unwatched.discard(name)
                    else:
                        self._members[name] = value
        except BaseException:
            # Whatever was interrupted is read again on the next attempt.
            self._full_resync = True
            raise

    async def _read_children(self) -> None:
        current = None
        if self._session.persistent_watches is not False:
            # Armed again on every full listing (the server forgets it with the connection), and listed right
            # behind it, without waiting: the server arms it before it lists.
            current = await self._list_under_persistent_watch()
        self._persistent = current is not None
        if current is None:
            current = await self._list_arming_a_children_watch()
        for gone in set(self._members) - current:
            del self._members[gone]
            self._unwatched.discard(gone)
            self._dirty_nodes.discard(gone)
        # A member read as missing (deleted and created again under the same name, as the healer of another
        # client does) never left the children list: read it again, or it would stay missing for good.
        new = sorted(name for name in current if self._members.get(name) is None)
        if self._own_creates is not None and new:
            new = self._take_own_creates(new)
        # Before the reads, not after: a change an event reports while they are answered is newer than they are.
        self._dirty_nodes.difference_update(new)
        values = await self._read_nodes(new)
        for name, value in zip(new, values, strict=True):
            if name in current:
                self._members[name] = value

    async def _list_arming_a_children_watch(self) -> set[str]:
        client = self._session.client
        try:
            names = await self._session.request("get_children", client.get_children_async, self._path,
                                                self._watch_children)
        except NoNodeError:
            names = []
            stat = await self._session.request("exists", client.exists_async, self._path, self._watch_children)
            if stat is not None:  # created in between: read it again
                self._children_dirty = True
                self._wake.set()
        return set(names)

    async def _list_under_persistent_watch(self) -> set[str] | None:
        """Arm the persistent watch and list the service: its children now, the listing with every event that
        arrived while it was answered applied on top (the newest per node; an event before the answer is one the
        listing already reflects). ``None``: the server has no persistent watches."""
        session = self._session
        events: dict[str, EventType] = {}
        self._events_while_listing = events
        try:
            armed = session.send_persistent_watch(self._path, self._watch_below)
            listing = session.send("get_children", session.client.get_children_async, self._path)
            if not await session.persistent_watch_armed(armed):
                with contextlib.suppress(Exception):
                    await session.reply("get_children", listing)  # lost with the connection the server closes
                return None
            try:
                names = await session.reply("get_children", listing)
            except NoNodeError:
                names = []  # the watch reports the service's first member when it comes
        finally:
            self._events_while_listing = None
        current = set(names)
        for name, kind in events.items():
            if kind == EventType.DELETED:
                current.discard(name)
            else:
                current.add(name)
        return current

    async def _take_own_creates_once_checked(self, names: list[str]) -> list[str]:
        """Of the new members among ``names``, take those this backend is creating from :class:`OwnCreates` once
        their owner check has answered (the persistent watch's event of a create arrives before the create's
        answer); the rest, to read."""
        assert self._own_creates is not None
        fresh = [name for name in names if self._members.get(name) is None]
        waiting = [
            waiter for waiter in (self._own_creates.settled(f"{self._path}/{name}") for name in fresh)
            if waiter is not None
        ]
        if waiting:
            await asyncio.wait(waiting, timeout=OWN_CREATE_WAIT)
        taken = set()
        for name in fresh:
            if name in self._members and self._members[name] is None and name not in self._dirty_nodes:
                data = self._own_creates.take(f"{self._path}/{name}")
                if data is not None:
                    self._members[name] = decode_or_none(data, self._namespace, self._service, name)
                    taken.add(name)
        return [name for name in names if name not in taken and name in self._members]

    def _take_own_creates(self, new: list[str]) -> list[str]:
        """Members this backend just created, from their create (see :class:`OwnCreates`); the rest, to read."""
        assert self._own_creates is not None
        to_read = []
        for name in new:
            data = self._own_creates.take(f"{self._path}/{name}")
            if data is None or name in self._dirty_nodes:
                to_read.append(name)
            else:
                self._members[name] = decode_or_none(data, self._namespace, self._service, name)
                self._unwatched.add(name)
        return to_read

    async def _read_nodes(self, names: list[str]) -> list[Instance | None]:
        """Read the nodes in one go (``None``: gone, or not a usable instance), arming our data watch on each."""
        self._unwatched.difference_update(names)  # the gets arm our own data watch (or the persistent one has them)
        data = await self._session.get_many(
            [f"{self._path}/{name}" for name in names], None if self._persistent else self._watch_node
        )
        return [
            None if raw is None else decode_or_none(raw, self._namespace, self._service, name)
            for name, raw in zip(names, data, strict=True)
        ]

    def _members_tuple(self) -> tuple[Instance, ...]:
        return tuple(sorted((i for i in self._members.values() if i is not None), key=lambda i: i.id))

    def _snapshot(self, *, stale: bool) -> Snapshot:
        self._revision += 1
        return Snapshot(
            service=self._service,
            namespace=self._namespace,
            instances=self._members_tuple(),
            revision=self._revision,
            stale=stale,
        )


def decode_or_none(raw: Any, namespace: str, service: str, name: str) -> Instance | None:
    """Decode znode data; foreign data that is not a usable instance is skipped with a debug log."""
    try:
        return decode_record(raw, namespace=namespace, service=service, node_name=name)
    except ValidationError as bad:
        log_skipped(logger, f"znode {namespace}/{service}/{name[:160]!r}", str(bad))  # once per node and reason
        return None
