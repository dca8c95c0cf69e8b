"""A snapshot stream per ``watch()`` call, from one-shot ZooKeeper watches.

A :class:`ServiceWatch` is what ``ZooKeeperBackend.watch`` returns: an async iterator of full snapshots, driven by
its consumer (the registry's watch hub, which shares it among every subscriber of the service; there is no
sharing here).

kazoo 2.11 has no persistent watches, and it drops every watch when the connection is suspended, so the
stream re-arms watches as it reads: a children watch on the service directory (or an ``exists`` watch while
it does not exist yet) and a data watch on each instance znode. Watch callbacks only mark what is dirty and
wake the stream; the stream then re-reads just that (new/removed children, changed nodes). After any reconnect
it re-lists everything, after a small random delay so that many watchers do not hit the server at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from discovery.core.errors import BackendUnavailableError, ValidationError
from discovery.core.foreign import log_skipped
from discovery.core.models import Instance, Snapshot
from discovery_zookeeper.bridge import call_in_loop
from discovery_zookeeper.connection import SessionEvent, ZooKeeperSession
from discovery_zookeeper.records import decode_record

logger = logging.getLogger("discovery.backends.zookeeper.watch")

#: Upper bound of the random delay before re-listing after a reconnect (spreads a herd of watchers).
RESYNC_JITTER = 0.25


class ServiceWatch(AsyncIterator[Snapshot]):
    """The snapshot stream of one ``watch(namespace, service)`` call: the current set, then one per change,
    stale while disconnected, until :meth:`stop` or ``aclose()``.
    """

    def __init__(self, session: ZooKeeperSession, path: str, namespace: str, service: str) -> None:
        self._session = session
        self._path = path
        self._namespace = namespace
        self._service = service
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._members: dict[str, Instance | None] = {}
        self._children_dirty = False
        self._dirty_nodes: set[str] = set()
        self._full_resync = True
        self._disconnected = False
        self._stopped = False
        self._stop_requested = asyncio.Event()
        self._revision = 0
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
                await self._sync_until_done()
                if self._stopped:
                    break
                if self._disconnected:
                    continue
                current = self._members_tuple()
                if current != last or stale_sent:
                    last, stale_sent = current, False
                    yield self._snapshot(stale=False)
        finally:
            self._stopped = True
            self._session.remove_listener(self._on_session_event)

    # -- events (callbacks from kazoo threads are forwarded to the loop) ------------------------------------------

    def _on_session_event(self, event: SessionEvent) -> None:
        if event in (SessionEvent.SUSPENDED, SessionEvent.EXPIRED):
            self._disconnected = True
        else:
            self._disconnected = False
            self._full_resync = True
        self._wake.set()

    def _watch_children(self, event: WatchedEvent) -> None:
        call_in_loop(self._loop, self._children_event, event)

    def _watch_node(self, event: WatchedEvent) -> None:
        call_in_loop(self._loop, self._node_event, event)

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

    # -- reading -------------------------------------------------------------------------------------------------

    async def _sync_until_done(self) -> None:
        """Apply pending changes, retrying with jittered backoff while the server does not answer."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(BackendUnavailableError),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            reraise=True,
        ):
            with attempt:
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
        try:
            if self._children_dirty:
                self._children_dirty = False
                await self._read_children()
            while self._dirty_nodes:
                name = self._dirty_nodes.pop()
                if name in self._members:
                    self._members[name] = await self._read_node(name)
        except BaseException:
            # Whatever was interrupted is read again on the next attempt.
            self._full_resync = True
            raise

    async def _read_children(self) -> None:
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
        current = set(names)
        for gone in set(self._members) - current:
            del self._members[gone]
        # A member read as missing (deleted and created again under the same name, as the healer of another
        # client does) never left the children list: read it again, or it would stay missing for good.
        new = sorted(name for name in current if self._members.get(name) is None)
        values = await asyncio.gather(*(self._read_node(name) for name in new))
        for name, value in zip(new, values, strict=True):
            if name in current:
                self._members[name] = value
        self._dirty_nodes.difference_update(new)

    async def _read_node(self, name: str) -> Instance | None:
        try:
            raw, _ = await self._session.request("get", self._session.client.get_async, f"{self._path}/{name}",
                                                 self._watch_node)
        except NoNodeError:
            return None  # the children watch reports the removal
        return decode_or_none(raw, self._namespace, self._service, name)

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
