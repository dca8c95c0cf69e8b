"""Durable definitions: the optional capability a backend exposes as ``backend.definitions``.

A definition (a ``Service``, ...) is an opaque value stored under ``kind/namespace/name``. Unlike an instance it
is durable — it outlives the process that wrote it (a persistent znode, an etcd key without lease, Consul KV) —
and it lives apart from instance records, so a definition named ``web`` and instances of a service ``web`` never
collide. A backend that cannot store definitions answers ``backend.definitions`` with ``None``.

:class:`DefinitionStore` checks every argument before an adapter sees it (kind, namespace and name become path
segments on every backend; the value is bounded by the smallest server limit), so bad input is a
``ValidationError`` and nothing is written, on every backend alike.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from discovery.core.errors import ValidationError
from discovery.core.validation import validate_dns_label, validate_namespace

#: The largest value a definition may hold: Consul's KV limit (``kv_max_value_size``), the smallest of the
#: three servers (etcd takes 1.5 MiB per request, ZooKeeper 1 MiB per znode).
MAX_DEFINITION_BYTES = 512 * 1024

_DEFINITION_KIND_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    """One durable definition (e.g. a ``Service``): opaque bytes stored under ``kind/namespace/name``."""

    kind: str
    namespace: str
    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class DefinitionSnapshot:
    """Every definition of one kind (in one namespace, or in all when ``namespace`` is ``None``).

    ``stale`` is set while the backend is unreachable: the last known set is kept, not emptied.
    """

    kind: str
    namespace: str | None
    items: tuple[StoredDefinition, ...]
    stale: bool = False


def validate_definition_kind(kind: object) -> str:
    """A definition kind is a short lowercase word (``services``): it becomes a path segment on every backend."""
    if not isinstance(kind, str) or not kind or len(kind) > 63 or not set(kind) <= _DEFINITION_KIND_CHARS:
        shown = repr(kind[:20]) if isinstance(kind, str) else type(kind).__name__  # never echo a whole value
        raise ValidationError("kind", f"{shown} is not a definition kind (lowercase letters, digits and '-')")
    return kind


def validate_definition_data(data: object) -> bytes:
    """A definition's value: bytes, at most :data:`MAX_DEFINITION_BYTES`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValidationError("data", f"a definition holds bytes, not {type(data).__name__}")
    if len(data) > MAX_DEFINITION_BYTES:
        raise ValidationError("data", f"{len(data)} bytes; a definition holds at most {MAX_DEFINITION_BYTES}")
    return bytes(data)


class DefinitionStore(abc.ABC):
    """Create, read, delete, list and watch the durable definitions of one backend.

    The public methods validate their arguments (``ValidationError``, nothing written) and call the abstract
    ``_put``/``_get``/``_delete``/``_list``/``_watch`` that an adapter implements. Every method raises
    ``ClosedError`` once the backend is closed and ``BackendUnavailableError`` when the server cannot be reached
    in time. The conformance kit (:mod:`discovery.testing.conformance`) holds every adapter to these rules.
    """

    async def put(self, kind: str, namespace: str, name: str, data: bytes) -> None:
        """Create or replace the definition ``kind/namespace/name`` durably."""
        kind, namespace, name = _checked_key(kind, namespace, name)
        await self._put(kind, namespace, name, validate_definition_data(data))

    async def get(self, kind: str, namespace: str, name: str) -> bytes | None:
        """The stored bytes of a definition, or ``None``."""
        return await self._get(*_checked_key(kind, namespace, name))

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete a definition; ``True`` if it existed."""
        return await self._delete(*_checked_key(kind, namespace, name))

    async def list(self, kind: str, namespace: str | None = None) -> tuple[StoredDefinition, ...]:
        """Every definition of ``kind`` in ``namespace`` (``None`` = every namespace), sorted by namespace, name."""
        return await self._list(*_checked_scope(kind, namespace))

    def watch(self, kind: str, namespace: str | None = None) -> AsyncGenerator[DefinitionSnapshot, None]:
        """Yield the current set of definitions of ``kind``, then the whole set again after every change.

        Stale-marked (the last set) while the backend is unreachable, re-read once it is back; a set equal to
        the last one yielded is not repeated. Arguments are checked at the call, before iteration; ``aclose()``
        ends the watch and frees what it holds on the server.
        """
        return self._watch(*_checked_scope(kind, namespace))

    @abc.abstractmethod
    async def _put(self, kind: str, namespace: str, name: str, data: bytes) -> None:
        """Store checked arguments (create or overwrite)."""

    @abc.abstractmethod
    async def _get(self, kind: str, namespace: str, name: str) -> bytes | None:
        """Read one definition."""

    @abc.abstractmethod
    async def _delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete one definition; ``True`` if it existed."""

    @abc.abstractmethod
    async def _list(self, kind: str, namespace: str | None) -> tuple[StoredDefinition, ...]:
        """Read every definition of a kind (in a namespace or all), sorted by namespace and name."""

    @abc.abstractmethod
    def _watch(self, kind: str, namespace: str | None) -> AsyncGenerator[DefinitionSnapshot, None]:
        """The current set, then the whole set after every change (see :meth:`watch`)."""


def _checked_key(kind: str, namespace: str, name: str) -> tuple[str, str, str]:
    return validate_definition_kind(kind), validate_namespace(namespace), validate_dns_label("name", name)


def _checked_scope(kind: str, namespace: str | None) -> tuple[str, str | None]:
    return validate_definition_kind(kind), None if namespace is None else validate_namespace(namespace)
