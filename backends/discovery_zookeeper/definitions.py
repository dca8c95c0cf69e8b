"""Durable definitions (Services...) as persistent znodes ``<root>/_definitions/<kind>/<namespace>/<name>``.

``_definitions`` cannot be a namespace (namespaces are DNS labels, which have no ``_``), so these znodes never
mix with the instance tree ``<root>/<namespace>/<service>/<id>`` nor with a Curator ``basePath``
(``<root>/<namespace>``). They are persistent: they outlive the session that wrote them.

The watch re-reads the whole (small) set after any one-shot watch fires or the session reconnects; every read
re-arms the watches it needs (children of the kind and namespace directories, data of each definition).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.protocol.states import WatchedEvent

from discovery.core.definitions import DefinitionSnapshot, DefinitionStore, StoredDefinition
from discovery.core.errors import BackendUnavailableError
from discovery_zookeeper.bridge import call_in_loop
from discovery_zookeeper.connection import SessionEvent, ZooKeeperSession

DEFINITIONS_NODE = "_definitions"
Watcher = Callable[[WatchedEvent], None] | None


class ZooKeeperDefinitions(DefinitionStore):
    """Reads and writes definitions through the backend's live session."""

    def __init__(self, session: Callable[[], ZooKeeperSession], root: str) -> None:
        #: The backend's live session (raises ``ClosedError`` once the backend is closed).
        self._session = session
        self._base = f"{root}/{DEFINITIONS_NODE}"

    def kind_path(self, kind: str) -> str:
        """The directory of every definition of a kind."""
        return f"{self._base}/{kind}"

    def path(self, kind: str, namespace: str, name: str) -> str:
        """The znode of one definition."""
        return f"{self.kind_path(kind)}/{namespace}/{name}"

    async def _request(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        session = self._session()
        return await session.request(what, getattr(session.client, method), *args, **kwargs)

    async def _put(self, kind: str, namespace: str, name: str, data: bytes) -> None:
        """Create or overwrite the persistent znode."""
        path = self.path(kind, namespace, name)
        try:
            await self._request("set", "set_async", path, data)
        except NoNodeError:
            try:
                await self._request("create", "create_async", path, data, makepath=True)
            except NodeExistsError:  # created concurrently: overwrite as we meant to
                await self._request("set", "set_async", path, data)

    async def _get(self, kind: str, namespace: str, name: str) -> bytes | None:
        """The znode's data, or ``None``."""
        try:
            data, _ = await self._request("get", "get_async", self.path(kind, namespace, name))
        except NoNodeError:
            return None
        return bytes(data)

    async def _delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete the znode; ``True`` if it existed."""
        try:
            await self._request("delete", "delete_async", self.path(kind, namespace, name))
        except NoNodeError:
            return False
        return True

    async def _list(self, kind: str, namespace: str | None) -> tuple[StoredDefinition, ...]:
        """Every definition of a kind (in a namespace or all)."""
        return await self._read(kind, namespace, None)

    async def _read(self, kind: str, namespace: str | None, watcher: Watcher) -> tuple[StoredDefinition, ...]:
        """Every definition of a kind (in a namespace or all), arming ``watcher`` on everything read."""
        kind_path = self.kind_path(kind)
        if namespace is None:
            namespaces = await self._children(kind_path, watcher)
        else:
            namespaces = [namespace]
        found: list[StoredDefinition] = []
        for ns in sorted(namespaces):
            ns_path = f"{kind_path}/{ns}"
            names = await self._children(ns_path, watcher)
            reads = await asyncio.gather(
                *(self._request("get", "get_async", f"{ns_path}/{name}", watcher) for name in names),
                return_exceptions=True,
            )
            for name, read in zip(names, reads, strict=True):
                if isinstance(read, NoNodeError):
                    continue  # deleted between listing and reading; the children watch reports it
                if isinstance(read, BaseException):
                    raise read
                found.append(StoredDefinition(kind, ns, name, bytes(read[0] or b"")))
        return tuple(sorted(found, key=lambda d: (d.namespace, d.name)))

    async def _children(self, path: str, watcher: Watcher) -> list[str]:
        try:
            return list(await self._request("get_children", "get_children_async", path, watcher))
        except NoNodeError:
            # Watch for its creation; if it appeared in between, the watch fires and we read again.
            await self._request("exists", "exists_async", path, watcher)
            return []

    async def _watch(self, kind: str, namespace: str | None) -> AsyncGenerator[DefinitionSnapshot, None]:
        """The current set, then the whole set after each change; stale while the session is disconnected."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        session = self._session()

        def fired(event: WatchedEvent) -> None:
            call_in_loop(loop, wake.set)

        def session_event(event: SessionEvent) -> None:
            wake.set()

        session.add_listener(session_event)
        last: tuple[StoredDefinition, ...] | None = None
        stale_sent = False
        try:
            while True:
                wake.clear()
                if session.connected.is_set():
                    try:
                        items = await self._read(kind, namespace, fired)
                    except BackendUnavailableError:
                        items = None
                    if items is not None and (items != last or stale_sent):
                        last, stale_sent = items, False
                        yield DefinitionSnapshot(kind, namespace, items)
                    if items is None:
                        await asyncio.sleep(0.2)  # back off, then read again
                        continue
                if not session.connected.is_set():
                    if last is not None and not stale_sent:
                        stale_sent = True
                        yield DefinitionSnapshot(kind, namespace, last, stale=True)
                    await session.connected.wait()
                    continue
                await wake.wait()
        finally:
            session.remove_listener(session_event)
