"""Durable definitions (Services...) as plain keys without a lease: ``<prefix>/_definitions/<kind>/<ns>/<name>``.

``_definitions`` is never a namespace (namespaces are DNS labels), and instance keys have exactly three
segments below the prefix, so :meth:`KeyLayout.parse` never mistakes a definition for an instance and a
service-prefix read or watch (``<prefix>/<ns>/<service>/``) never sees one.

The watch lists the kind's prefix at revision R and watches from R+1 (nothing falls in between); after any
event it lists again (definition sets are small) and re-watches from the new revision. A lost stream yields
the last set once with ``stale=True`` and reconnects with jittered backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Callable
from typing import Any

from aetcd import rpc
from aetcd.utils import prefix_range_end
from grpc.aio import EOF  # type: ignore[import-untyped]

from discovery.core.definitions import DefinitionSnapshot, DefinitionStore, StoredDefinition
from discovery.core.errors import BackendUnavailableError, ClosedError
from discovery_etcd.connection import EndpointPool, is_connection_error

log = logging.getLogger("discovery.backends.etcd.definitions")

DEFINITIONS_SEGMENT = "_definitions"


class _StreamEnded(Exception):
    """The watch stream ended or was canceled; list again."""


class EtcdDefinitions(DefinitionStore):
    """Reads, writes and watches definitions through the backend's endpoint pool."""

    def __init__(self, pool: EndpointPool, prefix: str, closed: Callable[[], bool]) -> None:
        self._pool = pool
        self._closed = closed
        self._base = f"{prefix}/{DEFINITIONS_SEGMENT}"

    def prefix(self, kind: str, namespace: str | None) -> bytes:
        """The key prefix of a kind (and namespace), with the trailing ``/``."""
        return (f"{self._base}/{kind}/" if namespace is None else f"{self._base}/{kind}/{namespace}/").encode()

    def key(self, kind: str, namespace: str, name: str) -> bytes:
        """The key of one definition."""
        return self.prefix(kind, namespace) + name.encode()

    def _check_open(self) -> None:
        if self._closed():
            raise ClosedError("this etcd backend is closed")

    async def _put(self, kind: str, namespace: str, name: str, data: bytes) -> None:
        self._check_open()
        key = self.key(kind, namespace, name)
        await self._pool.call("store a definition", lambda client: client.put(key, data))  # no lease: it stays

    async def _get(self, kind: str, namespace: str, name: str) -> bytes | None:
        self._check_open()
        key = self.key(kind, namespace, name)
        result = await self._pool.call("read a definition", lambda client: client.get(key))
        return None if result is None else bytes(result.value)

    async def _delete(self, kind: str, namespace: str, name: str) -> bool:
        self._check_open()
        key = self.key(kind, namespace, name)
        result = await self._pool.call("delete a definition", lambda client: client.delete(key))
        return bool(result is not None and int(result.deleted) > 0)

    async def _list(self, kind: str, namespace: str | None) -> tuple[StoredDefinition, ...]:
        self._check_open()
        return (await self._read(kind, namespace))[0]

    async def _read(self, kind: str, namespace: str | None) -> tuple[tuple[StoredDefinition, ...], int]:
        prefix = self.prefix(kind, namespace)
        result = await self._pool.call("list definitions", lambda client: client.get_prefix(prefix))
        kind_prefix = self.prefix(kind, None)
        found = []
        for kv in result:
            rest = bytes(kv.key)[len(kind_prefix):].decode(errors="replace").split("/")
            if len(rest) == 2 and all(rest):
                found.append(StoredDefinition(kind, rest[0], rest[1], bytes(kv.value)))
        return tuple(sorted(found, key=lambda d: (d.namespace, d.name))), int(result.header.revision)

    async def _watch(self, kind: str, namespace: str | None) -> AsyncGenerator[DefinitionSnapshot, None]:
        """The current set, then the whole set after every change; stale once per outage; ends when the backend
        closes.
        """
        self._check_open()
        prefix = self.prefix(kind, namespace)
        last: tuple[StoredDefinition, ...] | None = None
        stale_sent = False
        failures = 0
        while True:
            call: Any = None
            try:
                items, revision = await self._read(kind, namespace)
                failures = 0
                if items != last or stale_sent:
                    last, stale_sent = items, False
                    yield DefinitionSnapshot(kind, namespace, items)
                call = await self._open(prefix, revision + 1)
                await self._until_event(call)
            except (_StreamEnded, BackendUnavailableError) as lost:
                log.debug("definitions watch of %s: %s", prefix, lost)
            except Exception as error:
                if not is_connection_error(error):
                    raise
            else:
                continue
            finally:
                if call is not None:
                    call.cancel()
            if self._closed():
                return
            if last is not None and not stale_sent:
                stale_sent = True
                yield DefinitionSnapshot(kind, namespace, last, stale=True)
            failures += 1
            await asyncio.sleep(random.uniform(0, min(2.0, 0.05 * 2**failures)))  # full-jitter backoff

    async def _open(self, prefix: bytes, start_revision: int) -> Any:
        client = await self._pool.client()
        call = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
        create = rpc.WatchCreateRequest(key=prefix, range_end=prefix_range_end(prefix), start_revision=start_revision)
        try:
            async with asyncio.timeout(self._pool.timeout):
                await call.write(rpc.WatchRequest(create_request=create))
                created = await call.read()
        except BaseException:
            call.cancel()
            raise
        if created is EOF or created is None or not created.created or created.canceled:
            call.cancel()
            raise _StreamEnded("the watch was not created")
        return call

    @staticmethod
    async def _until_event(call: Any) -> None:
        while True:
            response = await call.read()
            if response is EOF or response.canceled or int(response.compact_revision) != 0:
                raise _StreamEnded("the watch stream ended")
            if response.events:
                return


__all__ = ["EtcdDefinitions"]
