"""``ConsulBackend``: registrations in Consul's native catalog, kept alive by TTL checks, watched by blocking
queries. See :mod:`discovery_consul.layout` for the layout and docs/decisions/consul-*.md for the reasons.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import weakref
from typing import Any

from discovery.core.backend import Backend, Capabilities, StateListener
from discovery.core.errors import (
    ClosedError,
    ConfigurationError,
    DiscoveryError,
    NotRegisteredError,
    UnsupportedOperationError,
    ValidationError,
)
from discovery.core.foreign import log_skipped
from discovery.core.models import Instance, Status
from discovery.core.urls import BackendURL
from discovery.core.validation import validate_service_name
from discovery_consul import layout, records
from discovery_consul.connection import ConsulClient, UnknownToAgentError
from discovery_consul.definitions import ConsulDefinitions
from discovery_consul.keepalive import Registration, status_check_definition
from discovery_consul.settings import MIN_TTL, ConsulSettings
from discovery_consul.watch import ChangeFeed, ServiceWatch, decode_entries, decoded_entries

log = logging.getLogger("discovery.backends.consul.backend")

Key = tuple[str, str, str]

# A dead registrant's check goes critical at most TTL after its last heartbeat; the agent then syncs the
# change to the catalog and wakes the blocking queries at once. One second covers that and the rate limiter.
DETECTION_SLACK = 1.0
#: Seconds a write is remembered for read-your-writes (an agent syncs a write in milliseconds; a read waits for it
#: at most the URL's timeout): writes nobody reads back are dropped after this.
UNSYNCED_HORIZON = 60.0
#: services() lists at most this many services at once.
SERVICES_CONCURRENCY = 32


class ConsulBackend(Backend):
    """``consul://host:8500[/scope]?dc=&token=&ttl=&timeout=&wait=&deregister_after=`` on ``consul.aio``.

    Not thread-safe, like every backend: only its registry's event loop calls it.
    """

    scheme = "consul"

    def __init__(self, settings: ConsulSettings) -> None:
        self._settings = settings
        self._capabilities = Capabilities(
            name="consul", default_ttl=settings.default_ttl, min_ttl=MIN_TTL, detection_slack=DETECTION_SLACK
        )
        self._client: ConsulClient | None = None
        self._feed: ChangeFeed | None = None
        self._registrations: dict[Key, Registration] = {}
        # Service ids the agent may hold checks of that this backend did not write (left by an earlier process,
        # or a write whose answer was lost): their first registration must set the checks' statuses explicitly.
        self._maybe_at_agent: set[str] = set()
        # This process's watch streams per service: its own writes wake them (read-your-writes).
        # Its writes the catalog may not show yet, per service: service id -> (what it should show, when written).
        self._unsynced: dict[tuple[str, str], dict[str, tuple[Instance | None, float]]] = {}
        self._unsynced_swept = 0.0
        self._service_watches: dict[tuple[str, str], weakref.WeakSet[ServiceWatch]] = {}
        #: This registrant's owner mark (docs/decisions/session-ownership.md); random, not a secret.
        self._owner = secrets.token_hex(6)
        self._closed = False
        self._definitions = ConsulDefinitions(self._require_client, settings.scope, settings.wait)

    def __repr__(self) -> str:
        return f"ConsulBackend({str(self._settings.url)!r})"

    @classmethod
    def from_url(cls, url: BackendURL) -> ConsulBackend:
        """Build from a ``consul://`` URL; unknown parameters are a ``ConfigurationError``."""
        return cls(ConsulSettings.from_url(url))

    @property
    def capabilities(self) -> Capabilities:
        """Per-registration TTLs from 1 s; detection within TTL + 1 s."""
        return self._capabilities

    @property
    def settings(self) -> ConsulSettings:
        """The parsed options."""
        return self._settings

    @property
    def owner_mark(self) -> str:
        """This registrant's owner mark: written in each registration's ``Meta`` and check ids."""
        return self._owner

    @property
    def definitions(self) -> ConsulDefinitions:
        """Definitions are KV entries under ``discovery/_definitions/<scope>/`` (see :mod:`.definitions`)."""
        return self._definitions

    def _require_client(self) -> ConsulClient:
        if self._closed:
            raise ClosedError("this Consul backend is closed")
        if self._client is None:
            raise DiscoveryError("the Consul backend is not started")
        return self._client

    async def start(self) -> None:
        """Open the connection pool and prove the agent answers (``BackendUnavailableError`` if not)."""
        settings = self._settings
        client = ConsulClient(
            settings.host, settings.port, security=settings.security, dc=settings.dc, timeout=settings.timeout,
            monitor=self.connection,
        )
        try:
            await client.agent_self()
            self._maybe_at_agent = await client.agent_service_ids()
        except BaseException:
            await client.close()
            raise
        self._client = client
        self._feed = ChangeFeed(client, settings.wait)

    async def close(self) -> None:
        """Deregister every registration of this backend, then disconnect."""
        if self._closed:
            return
        client = self._client
        registrations = list(self._registrations.values())
        self._registrations.clear()
        for registration in registrations:
            await registration.stop()
            if client is not None:
                try:
                    await self._deregister_if_ours(client, registration)
                except DiscoveryError as error:
                    log.warning("could not deregister %s on close: %s", registration.service_id, error)
        await self._shutdown()

    @staticmethod
    async def _deregister_if_ours(client: ConsulClient, registration: Registration) -> None:
        """Remove the service from the agent unless another registrant holds it now (then it is theirs)."""
        if registration.given_up or await registration.holder() == "other":
            return
        await client.deregister_service(registration.service_id)


    async def abort(self) -> None:
        """Stop heartbeats and disconnect without deregistering: the checks go critical at their TTL."""
        if self._closed:
            return
        registrations = list(self._registrations.values())
        self._registrations.clear()
        for registration in registrations:
            await registration.stop()
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._closed = True
        if self._feed is not None:
            await self._feed.close()  # every stream following it wakes and ends
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def register(self, instance: Instance, ttl: float, on_state: StateListener) -> None:
        """Register the instance with the agent (replacing one with the same key) and start its heartbeat."""
        client = self._require_client()
        previous = self._registrations.pop(instance.key, None)
        if previous is not None:
            await previous.stop()
        service_id = layout.consul_service_id(instance, self._settings.scope)
        registration = Registration(
            client, instance, ttl, on_state, self._settings.deregister_after, self._settings.scope,
            owner=self._owner, known_to_agent=previous is not None or service_id in self._maybe_at_agent,
        )
        try:
            await registration.write(fresh=True)
        except BaseException:
            self._maybe_at_agent.add(service_id)
            raise
        self._maybe_at_agent.discard(service_id)
        if self._closed:
            # close() ran while we were writing: starting a heartbeat now would outlive the client.
            raise ClosedError("the Consul backend was closed during register()")
        while (overtaken := self._registrations.pop(instance.key, None)) is not None:
            # A concurrent register() of the same key finished first; ours is the newer write. Stop its
            # heartbeat, or it would run on unreferenced and outlive close().
            await overtaken.stop()
        self._registrations[instance.key] = registration
        registration.start()
        self._written(instance, service_id, instance)

    async def update(self, instance: Instance) -> None:
        """Rewrite the registered instance's fields, status and maintenance mode; its heartbeat goes on.

        :class:`NotRegisteredError` (nothing written) if another registrant took the id over.
        """
        self._require_client()
        registration = self._registrations.get(instance.key)
        if registration is None or registration.given_up:
            raise NotRegisteredError(f"{'/'.join(instance.key)} is not registered by this backend")
        registration.instance = instance
        await registration.update()
        self._written(instance, registration.service_id, instance)

    async def deregister(self, instance: Instance) -> None:
        """Stop the heartbeat and remove the service from the agent, if it is still ours (a missing one is not
        an error; one another registrant took over is left alone).
        """
        client = self._require_client()
        registration = self._registrations.pop(instance.key, None)
        if registration is None:
            return  # not ours
        await registration.stop()
        service_id = registration.service_id
        self._maybe_at_agent.add(service_id)
        await self._deregister_if_ours(client, registration)
        self._maybe_at_agent.discard(service_id)
        self._written(instance, service_id, None)

    def _written(self, instance: Instance, service_id: str, expected: Instance | None) -> None:
        """Read-your-writes, kept by the reads: the agent syncs a write to the servers' catalog (what every read
        and watch queries) on its own schedule, a few milliseconds later. The write is remembered (``expected``,
        or no record of ours for ``None``) and the next read of the service waits until the catalog shows it
        (:meth:`_read_settled`); a write no longer waits itself (a filtered blocking query per write halved
        the registration rate, and 16 registrants of one service woke each other's queries on every write).
        This process's watches of the service query again at once.
        """
        for stream in list(self._service_watches.get((instance.namespace, instance.service), ())):
            stream.expect_change()
        now = asyncio.get_running_loop().time()
        if now - self._unsynced_swept > UNSYNCED_HORIZON:  # bounded: writes nobody read back are dropped
            self._unsynced_swept = now
            for key, pending in list(self._unsynced.items()):
                _forget_old(pending, now)
                if not pending:
                    del self._unsynced[key]
        self._unsynced.setdefault((instance.namespace, instance.service), {})[service_id] = (expected, now)

    async def _read_settled(self, namespace: str, service: str) -> list[dict[str, Any]]:
        """The service's health entries once the catalog shows this process's writes of it (at most the URL's
        ``timeout``: then a warning and the last answer). Without such writes, one plain read."""
        client = self._require_client()
        tag = records.query_tag(self._settings.scope, namespace)
        index, entries = await client.health_service(service, tag)
        pending = self._unsynced.get((namespace, service))
        if not pending:
            return entries
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.timeout
        while True:
            self._forget_shown(pending, entries, loop.time())
            if not pending:
                if self._unsynced.get((namespace, service)) is pending:
                    del self._unsynced[(namespace, service)]
                return entries
            if loop.time() >= deadline:
                log.warning("the Consul catalog did not show this process's writes of %s/%s within %g s",
                            namespace, service, self._settings.timeout)
                return entries
            # Blocking: answers as soon as the service changes (the agent's sync of the write).
            new_index, entries = await client.health_service(
                service, tag, index=max(index, 1), wait=max(0.05, deadline - loop.time()), parked=False
            )
            index = 0 if new_index < index else new_index

    async def _settle(self, namespace: str, service: str) -> None:
        """Before a new watch's first read: wait until the catalog shows this process's writes of the service."""
        if self._unsynced.get((namespace, service)):
            await self._read_settled(namespace, service)

    def _forget_shown(
        self, pending: dict[str, tuple[Instance | None, float]], entries: list[dict[str, Any]], now: float
    ) -> None:
        by_id = {(entry.get("Service") or {}).get("ID"): entry for entry in entries}
        for service_id, (expected, _) in list(pending.items()):
            if self._catalog_shows(by_id.get(service_id), expected):
                del pending[service_id]
        _forget_old(pending, now)

    def _catalog_shows(self, entry: dict[str, Any] | None, expected: Instance | None) -> bool:
        if entry is None:
            return expected is None
        service = entry.get("Service") or {}
        if records.owner_of(service) != self._owner:
            return True  # another registrant's now: ours is gone either way, nothing to wait for
        if expected is None:
            return False
        try:
            return records.instance_from_health_entry(entry) == expected
        except ValidationError:
            return False

    async def set_status(self, namespace: str, service: str, instance_id: str, status: Status) -> Instance:
        """Consul's own mechanisms, on the agent that holds the service: maintenance mode for DRAINING (what
        ``consul maint`` does), otherwise maintenance off and the status check passed (UP) or failed with the status
        as its note (DOWN, STARTING). A foreign service can be drained and undrained only."""
        client = self._require_client()
        _, entries = await client.health_service(service, records.query_tag(self._settings.scope, namespace))
        found = [(entry, instance) for entry, instance in decoded_entries(self._settings.scope, namespace, service,
                                                                         entries) if instance.id == instance_id]
        if not found:
            raise NotRegisteredError(f"{namespace}/{service}/{instance_id} is not registered (or its check is failing)")
        entry, instance = found[0]
        service_id = records.entry_service_id(entry)
        checks = entry.get("Checks")
        status_check = records.status_check_of(service_id, checks if isinstance(checks, list) else [])
        needs_check = not records.status_check_passing(status)
        if needs_check and status_check is None and not records.is_ours(entry):
            raise UnsupportedOperationError(
                f"{namespace}/{service}/{instance_id} was registered by another tool: it can be drained (maintenance "
                f"mode) and set UP again, not set {status.value}")
        try:
            if status is Status.DRAINING:
                await client.set_maintenance(service_id, True, reason=f"{records.STATUS_CHECK_NOTE_PREFIX}DRAINING")
            else:
                # First, so that DRAINING -> DOWN never shows UP in between.
                if status_check is not None:
                    await client.update_ttl_check(str(status_check.get("CheckID")),
                                                  records.status_check_passing(status),
                                                  note=f"{records.STATUS_CHECK_NOTE_PREFIX}{status.value}")
                elif needs_check:
                    # Ours, registered UP without a status check (one check per UP instance): add it, failing.
                    record = entry.get("Service")
                    owner = records.owner_of(record if isinstance(record, dict) else {})
                    changed = instance.with_changes(status=status)
                    # Born passing, then failed: the agent syncs a status change to the catalog at once but an
                    # output change only within check_update_interval (5 min), and the output names the status.
                    check = {**status_check_definition(service_id, owner, changed), "Status": "passing"}
                    await client.register_check(service_id, check)
                    await client.update_ttl_check(str(check["CheckID"]), False,
                                                  note=f"{records.STATUS_CHECK_NOTE_PREFIX}{status.value}")
                await client.set_maintenance(service_id, False)
        except UnknownToAgentError:
            node = entry.get("Node") or {}
            where = f"{node.get('Node')} ({node.get('Address')})" if isinstance(node, dict) else "another node"
            raise ConfigurationError(
                f"{namespace}/{service}/{instance_id} is registered with the Consul agent of node {where}, not with "
                f"{self._settings.host}:{self._settings.port}: maintenance and checks are set on that agent") from None
        return instance.with_changes(status=status)

    def adopt(self, instance: Instance) -> None:
        """Write ``instance`` (its status: maintenance, status check) back when re-registering after an agent
        forgot us, and in the daily status refresh."""
        registration = self._registrations.get(instance.key)
        if registration is not None:
            registration.adopt(instance)

    async def list(self, namespace: str, service: str) -> tuple[Instance, ...]:
        """The live instances of a service in a namespace (every status; dead registrants excluded)."""
        entries = await self._read_settled(namespace, service)
        return decode_entries(self._settings.scope, namespace, service, entries)

    async def services(self, namespace: str) -> tuple[str, ...]:
        """Services with at least one instance of the namespace, sorted: those tagged with it, and in an
        unscoped ``default`` namespace every catalog service with a valid name (foreign ones included)."""
        client = self._require_client()
        for pending_namespace, pending_service in list(self._unsynced):  # a new service shows once it is synced
            if pending_namespace == namespace:
                await self._read_settled(namespace, pending_service)
        catalog = await client.catalog_services()
        if records.sees_foreign(self._settings.scope, namespace):
            candidates = sorted(name for name in catalog if is_service_name(name))
        else:
            candidates = sorted(name for name, tags in catalog.items() if namespace in tags)
        # Bounded: each list is one HTTP connection, and an agent refuses a client's 201st by default.
        limit = asyncio.Semaphore(SERVICES_CONCURRENCY)

        async def listed(name: str) -> tuple[Instance, ...]:
            async with limit:
                return await self.list(namespace, name)

        found = await asyncio.gather(*(listed(name) for name in candidates))
        return tuple(name for name, instances in zip(candidates, found, strict=True) if instances)

    def watch(self, namespace: str, service: str) -> ServiceWatch:
        """A new stream: the current snapshot, then one per change; ``stale`` copies of the last set while Consul
        is away. It ends once this backend is closed.
        """
        client = self._require_client()
        assert self._feed is not None  # made with the client
        stream = ServiceWatch(
            client, self._feed, self._settings.scope, namespace, service, self._settings.wait, lambda: self._closed,
            before_first_read=lambda: self._settle(namespace, service),
        )
        self._service_watches.setdefault((namespace, service), weakref.WeakSet()).add(stream)
        return stream


def _forget_old(pending: dict[str, tuple[Instance | None, float]], now: float) -> None:
    for service_id, (_, written_at) in list(pending.items()):
        if now - written_at > UNSYNCED_HORIZON:
            del pending[service_id]


def is_service_name(name: str) -> bool:
    """Whether a Consul service name is a valid service name here (a DNS-1123 label); one DEBUG line if not."""
    try:
        validate_service_name(name)
    except ValidationError as error:
        log_skipped(log, f"Consul service name {name[:64]!r}", str(error))
        return False
    return True


__all__ = ["ConsulBackend"]
