"""Durable definitions (Services...) in Consul's KV store:
``discovery/_definitions/<scope>/<kind>/<namespace>/<name>`` (``<scope>`` is ``_`` for an unscoped URL,
which no real scope can be: scopes start with a letter or digit).

KV entries are independent of the agent's service catalog, so a definition named ``web`` and instances of the
service ``web`` never collide, and definitions outlive the agent that wrote them (they live on the servers).
The watch is a blocking query on the kind's prefix (``?recurse&index=``), with the same index rules as the
health watches: an index below 1 or going backwards starts over from 0.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Callable

from discovery.core.definitions import DefinitionSnapshot, DefinitionStore, StoredDefinition
from discovery.core.errors import BackendUnavailableError
from discovery_consul.connection import ConsulClient

log = logging.getLogger("discovery.backends.consul.definitions")

ROOT = "discovery/_definitions"
UNSCOPED = "_"


class ConsulDefinitions(DefinitionStore):
    """KV reads, writes and blocking-query watches through the backend's client."""

    def __init__(self, client: Callable[[], ConsulClient], scope: str | None, wait: float) -> None:
        #: The backend's started client (raises ``ClosedError`` once the backend is closed).
        self._client = client
        self._base = f"{ROOT}/{scope or UNSCOPED}"
        self._wait = wait

    def prefix(self, kind: str, namespace: str | None) -> str:
        """The KV prefix of a kind (and namespace), with the trailing ``/``."""
        return f"{self._base}/{kind}/" if namespace is None else f"{self._base}/{kind}/{namespace}/"

    def key(self, kind: str, namespace: str, name: str) -> str:
        """The KV key of one definition."""
        return self.prefix(kind, namespace) + name

    async def _put(self, kind: str, namespace: str, name: str, data: bytes) -> None:
        await self._client().kv_put(self.key(kind, namespace, name), data)

    async def _get(self, kind: str, namespace: str, name: str) -> bytes | None:
        return await self._client().kv_get(self.key(kind, namespace, name))

    async def _delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete the key; ``True`` if it existed (Consul's DELETE itself does not say)."""
        if await self._get(kind, namespace, name) is None:
            return False
        await self._client().kv_delete(self.key(kind, namespace, name))
        return True

    async def _list(self, kind: str, namespace: str | None) -> tuple[StoredDefinition, ...]:
        return (await self._read(kind, namespace, 0))[0]

    async def _read(self, kind: str, namespace: str | None, index: int) -> tuple[tuple[StoredDefinition, ...], int]:
        new_index, entries = await self._client().kv_list(self.prefix(kind, namespace), index, self._wait)
        kind_prefix = self.prefix(kind, None)
        found = []
        for key, value in entries:
            rest = key[len(kind_prefix):].split("/")
            if len(rest) == 2 and all(rest):
                found.append(StoredDefinition(kind, rest[0], rest[1], value))
        return tuple(sorted(found, key=lambda d: (d.namespace, d.name))), new_index

    async def _watch(self, kind: str, namespace: str | None) -> AsyncGenerator[DefinitionSnapshot, None]:
        """The current set, then the whole set after every change; stale once per outage."""
        last: tuple[StoredDefinition, ...] | None = None
        stale_sent = False
        index = 0
        failures = 0
        while True:
            try:
                items, new_index = await self._read(kind, namespace, index)
            except BackendUnavailableError as error:
                log.debug("definitions watch of %s: %s", kind, error)
                if last is not None and not stale_sent:
                    stale_sent = True
                    yield DefinitionSnapshot(kind, namespace, last, stale=True)
                failures += 1
                index = 0
                await asyncio.sleep(random.uniform(0, min(2.0, 0.05 * 2**failures)))  # full-jitter backoff
                continue
            failures = 0
            index = new_index if new_index >= max(index, 1) else 0
            if items != last or stale_sent:
                last, stale_sent = items, False
                yield DefinitionSnapshot(kind, namespace, items)
