"""``EtcdBackend``: the discovery contract on etcd v3 (aetcd, asyncio)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from discovery.core.backend import Backend, Capabilities, StateListener
from discovery.core.errors import (
    BackendUnavailableError,
    ClosedError,
    DiscoveryError,
    NotRegisteredError,
    UnsupportedOperationError,
)
from discovery.core.foreign import foreign_key_of
from discovery.core.models import Instance, Status
from discovery.core.urls import BackendURL
from discovery_etcd.connection import EndpointPool
from discovery_etcd.definitions import EtcdDefinitions
from discovery_etcd.keepalive import LeasedKey, LeaseGroup, LeaseGroupRetired, lease_ttl
from discovery_etcd.layout import KeyLayout
from discovery_etcd.records import decode_endpoint, decode_endpoint_cached, encode_endpoint, is_ours
from discovery_etcd.settings import DETECTION_SLACK, MIN_TTL, EtcdSettings
from discovery_etcd.watch import Lister, ServiceWatch, StreamProbe

log = logging.getLogger("discovery.backends.etcd.backend")

#: Read-compare-rewrite rounds of ``set_status`` before giving up on a key that keeps changing.
_REWRITE_ATTEMPTS = 5


class EtcdBackend(Backend):
    """``etcd://host1:2379,host2:2379/prefix?ttl=10&timeout=5``: registrations are leased keys.

    Keys are ``<prefix>/<namespace>/<service>/<id>`` (prefix default ``/discovery``) holding the JSON that
    etcd's ``naming/endpoints`` package writes, so a gRPC ``etcd:///`` resolver pointed at
    ``<prefix>/<namespace>/<service>`` finds our instances. Registrations with the same TTL share one lease.

    Not thread-safe, like every backend: only its registry's event loop calls it.
    """

    scheme = "etcd"

    def __init__(self, settings: EtcdSettings) -> None:
        self._settings = settings
        self._layout = KeyLayout(settings.prefix)
        self._groups: dict[int, LeaseGroup] = {}
        self._owner: dict[bytes, LeaseGroup] = {}
        self._closed = False
        self._capabilities = Capabilities(
            name="etcd",
            default_ttl=float(lease_ttl(settings.ttl)),
            min_ttl=MIN_TTL,
            detection_slack=DETECTION_SLACK,
        )
        # the pool reports to self.connection, which is named after the capabilities: both come after them
        self._pool = EndpointPool(settings, self.connection)
        # Shared by every watch stream: one liveness probe, and one read for many first lists.
        self._probe = StreamProbe(self._pool.timeout)
        self._lister = Lister(self._pool, self._layout, self._probe)
        self._definitions = EtcdDefinitions(self._pool, self._layout.prefix, lambda: self._closed)

    @classmethod
    def from_url(cls, url: BackendURL) -> EtcdBackend:
        """Parameters: ``ttl`` (seconds, default 10, at least 2) and ``timeout`` (seconds, default 5)."""
        return cls(EtcdSettings.from_url(url))

    @property
    def capabilities(self) -> Capabilities:
        """TTL per registration (whole seconds, at least 2); detection within TTL + 1 s."""
        return self._capabilities

    @property
    def layout(self) -> KeyLayout:
        """The key layout under this backend's prefix."""
        return self._layout

    @property
    def definitions(self) -> EtcdDefinitions:
        """Definitions are keys without a lease under ``<prefix>/_definitions/`` (see :mod:`.definitions`)."""
        return self._definitions

    @property
    def pool(self) -> EndpointPool:
        """The endpoint pool: raw aetcd calls over this backend's endpoints, failover, retries and credentials, for
        what the contract does not cover (``await backend.pool.call("read", lambda client: client.get(key))``).
        """
        return self._pool

    def effective_ttl(self, requested: float | None) -> float:
        """etcd leases have whole-second TTLs: the requested TTL (at least 2 s) rounded up."""
        return float(lease_ttl(super().effective_ttl(requested)))

    def lease_ids(self) -> dict[int, int | None]:
        """The current lease id for each TTL in use."""
        return {ttl: group.lease_id for ttl, group in self._groups.items()}

    async def start(self) -> None:
        """Check that some endpoint answers within ``timeout``."""
        await self._pool.call("connect", lambda client: client.status())

    async def close(self) -> None:
        """Revoke every lease (which deletes its keys) and disconnect; open watch streams then raise ``ClosedError``."""
        if self._closed:
            return
        self._closed = True
        for group in list(self._groups.values()):
            try:
                await group.revoke()
            except DiscoveryError as error:
                log.warning("could not revoke an etcd lease on close; its keys expire with the TTL: %s", error)
        self._groups.clear()
        self._owner.clear()
        await self._pool.close()

    async def abort(self) -> None:
        """Stop the keepalives and drop the connection; the leases expire on the server as after a crash."""
        self._closed = True
        for group in list(self._groups.values()):
            await group.stop()
        self._groups.clear()
        self._owner.clear()
        await self._pool.close()

    async def register(self, instance: Instance, ttl: float, on_state: StateListener) -> None:
        """Put the instance's key on the lease of its TTL (replacing any previous value of that key)."""
        self._check_open()
        key = self._key(instance)
        previous = self._owner.get(key)
        while True:
            group = self._group(lease_ttl(ttl))
            try:
                await group.put(LeasedKey(key, encode_endpoint(instance), on_state))
                break
            except LeaseGroupRetired:
                continue  # emptied and dropped while we waited for it: _group() makes a fresh one
        self._owner[key] = group
        if previous is not None and previous is not group:
            previous.forget(key)
            await self._drop_if_empty(previous)

    async def update(self, instance: Instance) -> None:
        """Rewrite a registered instance on its current lease."""
        self._check_open()
        key = self._key(instance)
        group = self._owner.get(key)
        leased = group.leased(key) if group is not None else None
        if group is None or leased is None:
            raise NotRegisteredError(f"{instance.namespace}/{instance.service}/{instance.id} is not registered here")
        await group.update(LeasedKey(key, encode_endpoint(instance), leased.on_state))

    async def deregister(self, instance: Instance) -> None:
        """Delete the key; the lease is revoked once no key uses it."""
        self._check_open()
        key = self._key(instance)
        group = self._owner.pop(key, None)
        if group is None:
            # Not ours (never registered here, or already removed): another process may own that key now.
            return
        await group.delete(key)
        await self._drop_if_empty(group)

    async def set_status(self, namespace: str, service: str, instance_id: str, status: Status) -> Instance:
        """Rewrite the key with the new status on the lease it has (its owner's), in a transaction that compares
        its mod revision, so a concurrent write is never overwritten (re-read and tried again)."""
        self._check_open()
        key = self._layout.instance_key(namespace, service, instance_id)
        foreign_key = self._layout.instance_key(namespace, service, foreign_key_of(instance_id))
        for _ in range(_REWRITE_ATTEMPTS):
            current = await self._pool.call("read a registration", lambda client: client.get(key))
            if current is None and foreign_key != key:  # a foreign key segment, escaped into this id
                current = await self._pool.call("read a registration", lambda client: client.get(foreign_key))
            if current is None:
                raise NotRegisteredError(f"{namespace}/{service}/{instance_id} is not registered")
            if not is_ours(current.value):
                raise UnsupportedOperationError(
                    f"{namespace}/{service}/{instance_id} was registered by another tool (etcd naming endpoint "
                    "without our metadata): it is read-only here")
            instance = decode_endpoint(current.value, namespace, service, instance_id)
            if instance is None:
                raise UnsupportedOperationError(f"{namespace}/{service}/{instance_id} cannot be decoded: read-only")
            changed = instance.with_changes(status=status)
            revision, lease = current.mod_revision, current.lease

            async def rewrite(client: Any, value: bytes = encode_endpoint(changed), revision: int = revision,
                              lease: int = lease) -> bool:
                succeeded, _ = await client.transaction(
                    compare=[client.transactions.mod(key) == revision],
                    success=[client.transactions.put(key, value, lease=lease or None)],
                    failure=[],
                )
                return bool(succeeded)

            if await self._pool.call("rewrite a registration", rewrite):
                return changed
        raise BackendUnavailableError(f"{namespace}/{service}/{instance_id} kept changing; try again")

    def adopt(self, instance: Instance) -> None:
        """Re-put ``instance`` (not our earlier value) if our lease is ever lost and re-granted."""
        key = self._key(instance)
        group = self._owner.get(key)
        if group is not None:
            group.adopt(key, encode_endpoint(instance))

    async def list(self, namespace: str, service: str) -> tuple[Instance, ...]:
        """A linearizable read of ``<target>/``."""
        self._check_open()
        result = await self._pool.call(
            "list a service", lambda client: client.get_prefix(self._layout.service_prefix(namespace, service))
        )
        found = []
        for kv in result:
            parsed = self._layout.parse(kv.key)
            if parsed is None or parsed[:2] != (namespace, service):
                continue
            instance = decode_endpoint_cached(kv.value, *parsed)
            if instance is not None:
                found.append(instance)
        return tuple(found)

    async def services(self, namespace: str) -> tuple[str, ...]:
        """Services with at least one decodable instance under ``<prefix>/<namespace>/``."""
        self._check_open()
        result = await self._pool.call(
            "list services", lambda client: client.get_prefix(self._layout.namespace_prefix(namespace))
        )
        names = set()
        for kv in result:
            parsed = self._layout.parse(kv.key)
            if parsed is not None and parsed[0] == namespace and decode_endpoint_cached(kv.value, *parsed) is not None:
                names.add(parsed[1])
        return tuple(sorted(names))

    def watch(self, namespace: str, service: str) -> ServiceWatch:
        """A new revision-exact watch stream of ``<target>/`` (see :mod:`discovery_etcd.watch`)."""
        self._check_open()
        return ServiceWatch(
            self._pool, self._layout, namespace, service, lambda: self._closed, self._probe, self._lister
        )

    def _key(self, instance: Instance) -> bytes:
        return self._layout.instance_key(instance.namespace, instance.service, instance.id)

    def _group(self, ttl: int) -> LeaseGroup:
        group = self._groups.get(ttl)
        if group is None:
            group = self._groups[ttl] = LeaseGroup(self._pool, ttl)
        return group

    async def _drop_if_empty(self, group: LeaseGroup) -> None:
        # Retire under the group's lock first: a register() already waiting on this group must not land on a
        # lease that is about to be revoked (it would be deleted with it, silently).
        if self._groups.get(group.ttl) is not group or not await group.retire_if_empty():
            return
        if self._groups.get(group.ttl) is group:
            del self._groups[group.ttl]
        with contextlib.suppress(DiscoveryError):
            await group.revoke()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this etcd backend is closed")
