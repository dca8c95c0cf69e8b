"""``ServiceCatalog``: every Service and its live endpoints, followed from the backend, for the proxy and DNS.

It watches the Service definitions, and for each namespace that has Services it follows every registry
service of that namespace through the registry's shared watches (a selector may pick instances of any
service name, as a Kubernetes selector picks any pod). Registry services have no "new service" event on all
backends, so the list of service names of a namespace is re-read every ``rescan_interval`` seconds; the
instances of a known service change live. Readers get immutable values and never wait on I/O.

Following never stops for bad data: a stored definition that does not decode is skipped with a warning, and
if the definitions watch itself fails after the first read, the last set is kept (marked stale) and the watch
is opened again with a growing delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from discovery.core.errors import DiscoveryError, clipped
from discovery.core.models import Instance, Snapshot
from discovery.core.tasks import cancel_and_wait
from discovery.registry.async_registry import AsyncRegistry
from discovery.services.allocation import AllocationRanges
from discovery.services.endpoints import Endpoints, resolve_endpoints
from discovery.services.model import Service
from discovery.services.store import ServiceSet, ServiceStore

log = logging.getLogger("discovery.services")

Listener = Callable[[], None]
ServiceKey = tuple[str, str]
DEFAULT_RESCAN_INTERVAL = 2.0
#: Delays before opening the definitions watch again after it failed (doubling up to the maximum).
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 30.0


class _NamespaceInstances:
    """The instances of every registry service of one namespace."""

    def __init__(self, registry: AsyncRegistry, namespace: str, interval: float, on_change: Listener) -> None:
        self.namespace = namespace
        self.snapshots: dict[str, Snapshot] = {}
        self._registry = registry
        self._interval = interval
        self._on_change = on_change
        self._unsubscribes: list[Callable[[], Awaitable[object]]] = []
        self._known: set[str] = set()
        self._rescan = asyncio.Event()
        self._task = asyncio.create_task(self._scan_forever(), name=f"discovery-catalog-scan-{namespace}")

    def instances(self) -> list[Instance]:
        """Every instance currently known in the namespace."""
        return [i for snapshot in self.snapshots.values() for i in snapshot.instances]

    @property
    def stale(self) -> bool:
        """Whether some followed service is stale (its backend is unreachable)."""
        return any(s.stale for s in self.snapshots.values())

    def rescan_now(self) -> None:
        """Re-read the service names at once instead of at the next interval."""
        self._rescan.set()

    async def _scan_forever(self) -> None:
        while True:
            self._rescan.clear()
            try:
                names = await self._registry.services(self.namespace)
            except DiscoveryError as error:
                log.warning("cannot list the services of namespace %s: %s", self.namespace, error)
                names = ()
            for name in names:
                if name not in self._known:
                    self._known.add(name)
                    self._unsubscribes.append(self._registry.subscribe(name, self._updated, self.namespace))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._rescan.wait()

    def _updated(self, snapshot: Snapshot) -> None:
        self.snapshots[snapshot.service] = snapshot
        self._on_change()

    async def close(self) -> None:
        """Stop scanning and unsubscribe."""
        await cancel_and_wait(self._task)
        for unsubscribe in self._unsubscribes:
            with contextlib.suppress(DiscoveryError):
                await unsubscribe()


class ServiceCatalog:
    """Services (all namespaces, or one) and their endpoints, kept current. Start with :meth:`start`.

    Not thread-safe: use it on its registry's event loop.
    """

    def __init__(
        self,
        registry: AsyncRegistry,
        store: ServiceStore,
        *,
        namespace: str | None = None,
        rescan_interval: float = DEFAULT_RESCAN_INTERVAL,
    ) -> None:
        self._registry = registry
        self._store = store
        self._namespace = namespace
        self._rescan_interval = rescan_interval
        self._services: dict[ServiceKey, Service] = {}
        self._endpoints: dict[ServiceKey, Endpoints] = {}
        self._namespaces: dict[str, _NamespaceInstances] = {}
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()
        self._first = asyncio.Event()
        self._stale = False
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        #: Grows by one with every change readers can see.
        self.version = 0

    @property
    def services(self) -> tuple[Service, ...]:
        """Every Service, sorted by namespace and name."""
        return tuple(self._services[k] for k in sorted(self._services))

    @property
    def stale(self) -> bool:
        """Whether the Service definitions could not be re-read lately (the last set is kept)."""
        return self._stale

    @property
    def ranges(self) -> AllocationRanges:
        """The ClusterIP and node port ranges of the store the Services come from."""
        return self._store.ranges

    def service(self, namespace: str, name: str) -> Service | None:
        """One Service, if defined."""
        return self._services.get((namespace, name))

    def endpoints(self, namespace: str, name: str) -> Endpoints | None:
        """The current endpoints of a Service (``None`` if the Service is not defined)."""
        return self._endpoints.get((namespace, name))

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener()`` on the event loop after every change; returns the remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def rescan(self) -> None:
        """Re-read the registry service names of every followed namespace now."""
        for scanner in self._namespaces.values():
            scanner.rescan_now()

    async def start(self, timeout: float = 30.0) -> None:
        """Begin following; returns once the Service definitions have been read once."""
        self._task = asyncio.create_task(self._follow_definitions(), name="discovery-catalog-definitions")
        async with asyncio.timeout(timeout):
            await self._first.wait()
        if self._failure is not None:
            raise self._failure

    async def close(self) -> None:
        """Stop following."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        for scanner in list(self._namespaces.values()):
            await scanner.close()
        self._namespaces.clear()

    async def __aenter__(self) -> ServiceCatalog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_until(self, predicate: Callable[[ServiceCatalog], bool], timeout: float) -> None:
        """Wait until ``predicate(catalog)`` holds (``TimeoutError`` after ``timeout``)."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    async def _follow_definitions(self) -> None:
        delay = RETRY_FIRST_DELAY
        while True:
            try:
                async for service_set in self._store.watch(self._namespace):
                    await self._set_services(service_set)
                    self._first.set()
                    delay = RETRY_FIRST_DELAY
                return  # the watch ended: the backend is closing
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not self._first.is_set():  # start() reports it
                    self._failure = error
                    self._first.set()
                    log.error("following Service definitions failed: %s: %s", type(error).__name__,
                              clipped(str(error)))
                    return
                # Keep serving the last set (stale) rather than freezing silently; try again.
                log.warning("following Service definitions failed (%s: %s); keeping the last set, retrying in "
                            "%.1f s", type(error).__name__, clipped(str(error)), delay)
                self._stale = True
                self._recompute(force=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)

    async def _set_services(self, service_set: ServiceSet) -> None:
        self._services = {s.key: s for s in service_set.services}
        self._stale = service_set.stale
        wanted = {s.namespace for s in service_set.services}
        for namespace in wanted - set(self._namespaces):
            self._namespaces[namespace] = _NamespaceInstances(
                self._registry, namespace, self._rescan_interval, self._recompute
            )
        for namespace in set(self._namespaces) - wanted:
            await self._namespaces.pop(namespace).close()
        self._recompute(force=True)

    def _recompute(self, force: bool = False) -> None:
        endpoints: dict[ServiceKey, Endpoints] = {}
        for key, service in self._services.items():
            scanner = self._namespaces.get(service.namespace)
            instances = scanner.instances() if scanner is not None else []
            endpoints[key] = resolve_endpoints(service, instances, stale=scanner is not None and scanner.stale)
        if not force and endpoints == self._endpoints:
            return
        self._endpoints = endpoints
        self.version += 1
        self._changed.set()
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("catalog listener failed")


async def read_endpoints(registry: AsyncRegistry, service: Service) -> Endpoints:
    """The endpoints of a Service from one fresh read of its namespace (no watches; for one-shot commands)."""
    instances: list[Instance] = []
    if service.selector:
        for name in await registry.services(service.namespace):
            instances.extend(await registry.instances(name, service.namespace, selector=service.selector))
    return resolve_endpoints(service, instances)
