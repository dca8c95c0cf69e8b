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
from collections.abc import AsyncIterator, Callable
from typing import Any

from discovery.core.backend import DefinitionSnapshot, StoredDefinition, validate_definition_kind
from discovery.core.errors import BackendUnavailableError
from discovery_consul.connection import ConsulClient

log = logging.getLogger("discovery.backends.consul.definitions")

ROOT = "discovery/_definitions"
UNSCOPED = "_"


class ConsulDefinitions:
    """KV reads, writes and blocking-query watches through the backend's client."""

    def __init__(self, client: Callable[[], ConsulClient], scope: str | None, wait: float) -> None:
        self._client = client
        self._base = f"{ROOT}/{scope or UNSCOPED}"
        self._wait = wait

    def prefix(self, kind: str, namespace: str | None) -> str:
        """The KV prefix of a kind (and namespace), with the trailing ``/``."""
        kind = validate_definition_kind(kind)
        return f"{self._base}/{kind}/" if namespace is None else f"{self._base}/{kind}/{namespace}/"

    def key(self, kind: str, namespace: str, name: str) -> str:
        """The KV key of one definition."""
        return self.prefix(kind, namespace) + name

    async def _kv(
        self, what: str, call: Callable[[Any], Any], timeout: float | None = None, *, blocking: bool = False
    ) -> Any:
        client = self._client()
        # ConsulClient translates transport/ACL errors for every call; the KV API is not among its named calls.
        # A blocking query goes through the client's own pool for them (see ConsulClient.__init__).
        if blocking:
            assert timeout is not None
            return await client._call_blocking(what, call(client._blocking.kv), timeout)
        return await client._call(what, call(client._consul.kv), timeout)

    async def put(self, kind: str, namespace: str, name: str, data: bytes) -> None:
        """Write the key."""
        key = self.key(kind, namespace, name)
        written = await self._kv(f"PUT /v1/kv/{key}", lambda kv: kv.put(key, data))
        if written is not True:
            raise BackendUnavailableError(f"Consul did not store {key}")

    async def get(self, kind: str, namespace: str, name: str) -> bytes | None:
        """The key's value, or ``None``."""
        key = self.key(kind, namespace, name)
        _, entry = await self._kv(f"GET /v1/kv/{key}", lambda kv: kv.get(key))
        if entry is None:
            return None
        return bytes(entry.get("Value") or b"")

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete the key; ``True`` if it existed (Consul's DELETE itself does not say)."""
        if await self.get(kind, namespace, name) is None:
            return False
        key = self.key(kind, namespace, name)
        await self._kv(f"DELETE /v1/kv/{key}", lambda kv: kv.delete(key))
        return True

    async def read_all(self, kind: str, namespace: str | None) -> tuple[StoredDefinition, ...]:
        """Every definition of a kind (in a namespace or all)."""
        return (await self._read(kind, namespace, 0))[0]

    async def _read(self, kind: str, namespace: str | None, index: int) -> tuple[tuple[StoredDefinition, ...], int]:
        prefix = self.prefix(kind, namespace)
        blocking = index > 0
        wait = f"{self._wait:g}s" if blocking else None
        # Consul adds up to wait/16 of jitter to a blocking wait: leave room for it.
        timeout = None if not blocking else self._wait * 17 / 16 + 5.0
        raw_index, entries = await self._kv(
            f"GET /v1/kv/{prefix}?recurse", lambda kv: kv.get(prefix, recurse=True, index=index or None, wait=wait),
            timeout,
            blocking=blocking,
        )
        kind_prefix = self.prefix(kind, None)
        found = []
        for entry in entries or ():
            rest = str(entry.get("Key", ""))[len(kind_prefix):].split("/")
            if len(rest) == 2 and all(rest):
                found.append(StoredDefinition(kind, rest[0], rest[1], bytes(entry.get("Value") or b"")))
        return tuple(sorted(found, key=lambda d: (d.namespace, d.name))), int(raw_index)

    async def watch(self, kind: str, namespace: str | None) -> AsyncIterator[DefinitionSnapshot]:
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
