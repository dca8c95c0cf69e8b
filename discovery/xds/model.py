"""``XdsModel``: the xDS resources of every subscribed name, derived from one registry and kept current.

A resource is *pending* until what it is made from has been read once, then *present* (a :class:`Resource`)
or *absent*. Streams never answer for a pending Listener or Cluster (a state-of-the-world reply that leaves a
subscribed Listener or Cluster out deletes it on the client: a control plane that answers before its first
read would wipe every client that reconnects to it), and never send an endpoint assignment before the
registry's first snapshot of it (an empty one would fail every RPC).

Sources, all through the registry's public API and started only when some stream needs them:

* registry targets (``orders``, ``orders.payments``): ``AsyncRegistry.subscribe`` of that service; only UP
  instances become endpoints. A stale snapshot (backend unreachable) keeps its last instances, so an outage
  keeps serving the last endpoints.
* Service targets (``<svc>.<ns>.svc.cluster.local:<port>``): the Service definitions
  (``ServiceStore.watch``) and every registry service of the Service's namespace (``services()`` re-read every
  ``rescan_interval`` seconds, each one subscribed), resolved with ``resolve_endpoints``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from tenacity import wait_exponential_jitter

from discovery.core.errors import DiscoveryError, UnsupportedOperationError, ValidationError
from discovery.core.models import Instance, Snapshot, Status
from discovery.core.tasks import cancel_and_wait
from discovery.registry.async_registry import AsyncRegistry
from discovery.services.endpoints import resolve_endpoints
from discovery.services.model import CLUSTER_DOMAIN, Service, ServiceType
from discovery.services.store import ServiceStore
from discovery.xds import resources
from discovery.xds.names import RegistryTarget, ServiceTarget, Target, parse_target
from discovery.xds.resources import CLUSTER, ENDPOINTS, LISTENER, ROUTE, EndpointSpec, LbPolicy, Resource

log = logging.getLogger("discovery.xds")

ResourceKey = tuple[str, str]
DEFAULT_RESCAN_INTERVAL = 2.0


class _Pending:
    def __repr__(self) -> str:
        return "PENDING"


#: What :meth:`XdsModel.lookup` returns while a resource's source has not been read yet.
PENDING: Final = _Pending()
Lookup = Resource | None | _Pending


class Subscriber(Protocol):
    """A stream that wants to know when resources of a type it watches change."""

    def resources_changed(self, type_url: str) -> None:
        """Some watched resource of ``type_url`` changed (called on the event loop; must not block)."""


@dataclass
class _Feed:
    """One registry service followed for the endpoint assignments named in ``names``."""

    unsubscribe: Callable[[], Awaitable[object]]
    snapshot: Snapshot | None = None
    names: set[str] = field(default_factory=set)


def _retry_seconds(attempt: int) -> float:
    from tenacity import RetryCallState

    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return float(wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.5)(state))


class _NamespaceFollower:
    """Every registry service of one namespace, for Service targets (a selector may pick any service)."""

    def __init__(self, registry: AsyncRegistry, namespace: str, interval: float,
                 on_change: Callable[[str], None]) -> None:
        self.namespace = namespace
        self.snapshots: dict[str, Snapshot | None] = {}
        self._registry = registry
        self._interval = interval
        self._on_change = on_change
        self._listed = False
        self._unsubscribes: list[Callable[[], Awaitable[object]]] = []
        self._task = asyncio.create_task(self._scan(), name=f"discovery-xds-scan-{namespace}")

    @property
    def ready(self) -> bool:
        """Listed once, and every listed service's first snapshot is in."""
        return self._listed and all(s is not None for s in self.snapshots.values())

    def instances(self) -> list[Instance]:
        """Every instance of the namespace known now."""
        return [i for s in self.snapshots.values() if s is not None for i in s.instances]

    async def _scan(self) -> None:
        failures = 0
        while True:
            try:
                names = await self._registry.services(self.namespace)
            except DiscoveryError as error:
                failures += 1
                log.warning("cannot list the services of namespace %s (%s); retrying", self.namespace, error)
                await asyncio.sleep(_retry_seconds(failures))
                continue
            failures = 0
            for name in names:
                if name not in self.snapshots:
                    self.snapshots[name] = None
                    self._unsubscribes.append(
                        self._registry.subscribe(name, self._updated, self.namespace))
            if not self._listed:
                self._listed = True
                self._on_change(self.namespace)
            await asyncio.sleep(self._interval)

    def _updated(self, snapshot: Snapshot) -> None:
        self.snapshots[snapshot.service] = snapshot
        self._on_change(self.namespace)

    async def close(self) -> None:
        """Stop scanning and unsubscribe."""
        await cancel_and_wait(self._task)
        for unsubscribe in self._unsubscribes:
            with contextlib.suppress(DiscoveryError):
                await unsubscribe()


class XdsModel:
    """The resources of every name some stream watches (see the module docs). Runs on the registry's loop."""

    def __init__(
        self,
        registry: AsyncRegistry,
        *,
        cluster_domain: str = CLUSTER_DOMAIN,
        lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN,
        rescan_interval: float = DEFAULT_RESCAN_INTERVAL,
    ) -> None:
        self._registry = registry
        self._domain = cluster_domain
        self._lb_policy = LbPolicy(lb_policy)
        self._rescan_interval = rescan_interval
        self._table: dict[ResourceKey, Resource | None] = {}
        self._watchers: dict[ResourceKey, set[Subscriber]] = {}
        self._targets: dict[ResourceKey, Target] = {}
        self._feeds: dict[tuple[str, str], _Feed] = {}
        self._service_keys: set[ResourceKey] = set()
        self._namespaces: dict[str, _NamespaceFollower] = {}
        self._definitions: dict[tuple[str, str], Service] | None = None
        self._definitions_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- what streams call ---------------------------------------------------------------------------------------

    def lookup(self, type_url: str, name: str) -> Lookup:
        """The resource now: a :class:`Resource`, ``None`` (does not exist) or :data:`PENDING`."""
        key = (type_url, name)
        if key in self._table:
            return self._table[key]
        return PENDING

    def watch(self, type_url: str, name: str, subscriber: Subscriber) -> None:
        """Start deriving a resource (if nobody watched it yet) and tell ``subscriber`` of its changes."""
        key = (type_url, name)
        watchers = self._watchers.get(key)
        if watchers is not None:
            watchers.add(subscriber)
            return
        self._watchers[key] = {subscriber}
        try:
            target = parse_target(name, self._domain)
        except ValidationError as bad:
            log.warning("%s resource %r does not exist: %s", resources.SHORT_TYPE_NAMES.get(type_url, type_url),
                        name[:80], bad.reason)
            self._set(key, None)
            return
        self._targets[key] = target
        if isinstance(target, RegistryTarget):
            self._derive_registry(key, target)
        else:
            self._service_keys.add(key)
            self._start_services(target.namespace if type_url == ENDPOINTS else None)
            self._derive_service(key, target)

    async def unwatch(self, type_url: str, name: str, subscriber: Subscriber) -> None:
        """Stop telling ``subscriber``; the last one to leave stops deriving the resource."""
        key = (type_url, name)
        watchers = self._watchers.get(key)
        if watchers is None:
            return
        watchers.discard(subscriber)
        if watchers:
            return
        del self._watchers[key]
        self._table.pop(key, None)
        self._service_keys.discard(key)
        target = self._targets.pop(key, None)
        if isinstance(target, RegistryTarget) and type_url == ENDPOINTS:
            feed_key = (target.namespace, target.service)
            feed = self._feeds.get(feed_key)
            if feed is not None:
                feed.names.discard(name)
                if not feed.names:
                    del self._feeds[feed_key]
                    with contextlib.suppress(DiscoveryError):
                        await feed.unsubscribe()

    @property
    def watched(self) -> int:
        """How many resources some stream watches."""
        return len(self._watchers)

    async def close(self) -> None:
        """Stop every source."""
        self._closed = True
        if self._definitions_task is not None:
            await cancel_and_wait(self._definitions_task)
        for follower in self._namespaces.values():
            await follower.close()
        self._namespaces.clear()
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            with contextlib.suppress(DiscoveryError):
                await feed.unsubscribe()

    # -- registry targets ----------------------------------------------------------------------------------------

    def _derive_registry(self, key: ResourceKey, target: RegistryTarget) -> None:
        type_url, name = key
        if type_url == LISTENER:
            self._set(key, resources.listener(name, name))
        elif type_url == ROUTE:
            self._set(key, resources.route_configuration(name, name, target.cluster_name))
        elif type_url == CLUSTER:
            self._set(key, resources.cluster(name, self._lb_policy))
        elif type_url == ENDPOINTS:
            feed_key = (target.namespace, target.service)
            feed = self._feeds.get(feed_key)
            if feed is None:
                def updated(snapshot: Snapshot, feed_key: tuple[str, str] = feed_key) -> None:
                    self._registry_snapshot(feed_key, snapshot)

                unsubscribe = self._registry.subscribe(target.service, updated, target.namespace)
                feed = self._feeds[feed_key] = _Feed(unsubscribe)
            feed.names.add(name)
            if feed.snapshot is not None:
                self._set(key, _assignment_of(name, feed.snapshot))
        else:
            self._set(key, None)

    def _registry_snapshot(self, feed_key: tuple[str, str], snapshot: Snapshot) -> None:
        feed = self._feeds.get(feed_key)
        if feed is None:
            return
        feed.snapshot = snapshot
        for name in list(feed.names):
            self._set((ENDPOINTS, name), _assignment_of(name, snapshot))

    # -- Service targets -----------------------------------------------------------------------------------------

    def _start_services(self, namespace: str | None) -> None:
        if self._definitions_task is None:
            self._definitions_task = asyncio.create_task(self._follow_definitions(),
                                                          name="discovery-xds-definitions")
        if namespace is not None and namespace not in self._namespaces:
            self._namespaces[namespace] = _NamespaceFollower(
                self._registry, namespace, self._rescan_interval, self._namespace_changed)

    async def _follow_definitions(self) -> None:
        store = ServiceStore(self._registry.backend)
        failures = 0
        while True:
            try:
                async for service_set in store.watch(None):
                    failures = 0
                    self._definitions = {s.key: s for s in service_set.services}
                    self._recompute_services(None)
                return
            except asyncio.CancelledError:
                raise
            except UnsupportedOperationError as error:
                log.warning("Service targets do not exist here: %s", error)
                self._definitions = {}
                self._recompute_services(None)
                return
            except Exception as error:
                failures += 1
                log.warning("reading Service definitions failed (%s); retrying", error)
                await asyncio.sleep(_retry_seconds(failures))

    def _namespace_changed(self, namespace: str) -> None:
        self._recompute_services(namespace)

    def _recompute_services(self, namespace: str | None) -> None:
        for key in list(self._service_keys):
            target = self._targets.get(key)
            if isinstance(target, ServiceTarget) and (namespace is None or target.namespace == namespace):
                self._derive_service(key, target)

    def _derive_service(self, key: ResourceKey, target: ServiceTarget) -> None:
        if self._definitions is None:
            return  # pending: definitions not read yet
        type_url, name = key
        service = self._definitions.get((target.namespace, target.name))
        port = _service_port(service, target)
        if service is None or port is None:
            self._set(key, None)
            return
        cluster_name = target.cluster_name_for(port)
        if type_url == LISTENER:
            self._set(key, resources.listener(name, name))
        elif type_url == ROUTE:
            self._set(key, resources.route_configuration(name, name, cluster_name))
        elif type_url == CLUSTER:
            self._set(key, resources.cluster(name, self._lb_policy) if target.port is not None else None)
        elif type_url == ENDPOINTS:
            if target.port is None:
                self._set(key, None)
                return
            follower = self._namespaces.get(target.namespace)
            if follower is None or not follower.ready:
                return  # pending: the namespace's instances are not all read yet
            endpoints = resolve_endpoints(service, follower.instances()).for_port(port)
            self._set(key, resources.load_assignment(name, (
                EndpointSpec(e.address, e.port, e.instance.weight, e.instance.zone, e.instance.id, e.instance.service,
                             e.instance.namespace, e.instance.labels) for e in endpoints)))

    # -- shared --------------------------------------------------------------------------------------------------

    def _set(self, key: ResourceKey, value: Resource | None) -> None:
        if key not in self._watchers:
            return
        if key in self._table:
            old = self._table[key]
            if old is value or (old is not None and value is not None and old.digest == value.digest):
                return
        self._table[key] = value
        for subscriber in list(self._watchers.get(key, ())):
            subscriber.resources_changed(key[0])


def _service_port(service: Service | None, target: ServiceTarget) -> int | None:
    """The Service port a target means, or ``None`` (no such port, or ambiguous, or nothing to connect to)."""
    if service is None or service.type is ServiceType.EXTERNAL_NAME:
        return None
    if target.port is None:
        return service.ports[0].port if len(service.ports) == 1 else None
    port = service.port(target.port)
    return None if port is None else port.port


def _assignment_of(name: str, snapshot: Snapshot) -> Resource:
    return resources.load_assignment(name, (
        EndpointSpec(i.address, i.port, i.weight, i.zone, i.id, i.service, i.namespace, i.labels)
        for i in snapshot.instances if i.status is Status.UP
    ))
