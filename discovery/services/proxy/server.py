"""``ServiceProxy``: an asyncio L4 TCP proxy serving every Service of a :class:`ServiceCatalog`.

For each port of each Service it listens on

* the ClusterIP (``<clusterIP>:<port>``) - not for headless or ExternalName Services;
* for NodePort and LoadBalancer Services, the node port on the node address (default ``127.0.0.1``);
* for LoadBalancer Services with a ``loadBalancerIP``, and for every ``externalIPs`` entry, ``<ip>:<port>`` when
  that address is local (binding fails with "cannot assign requested address" otherwise; that is reported in
  :attr:`ServiceProxy.failures`, not fatal).

Each accepted connection goes to an endpoint chosen by the Service port's balancer (round-robin by default);
if connecting fails it tries the next pick, up to every endpoint once. Endpoint changes apply to new
connections only: open ones drain on the endpoint they have. With no endpoint the connection is closed at
once and counted in :attr:`PortStats.no_endpoint`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from discovery.client.balancers import Balancer, BalancerSpec, RoundRobin
from discovery.client.balancers import balancer_factory as balancer_factory_of
from discovery.core.models import Instance
from discovery.services.catalog import ServiceCatalog
from discovery.services.endpoints import Endpoint
from discovery.services.model import Service, ServicePort

log = logging.getLogger("discovery.services.proxy")

DEFAULT_NODE_ADDRESS = "127.0.0.1"
_BUFFER = 64 * 1024


class ListenerKind(enum.StrEnum):
    """Why the proxy listens on an address."""

    CLUSTER_IP = "clusterIP"
    NODE_PORT = "nodePort"
    LOAD_BALANCER_IP = "loadBalancerIP"
    EXTERNAL_IP = "externalIP"


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """One address:port the proxy should listen on, and the Service port it serves.

    Immutable: safe to share between threads.
    """

    address: str
    port: int
    namespace: str
    service: str
    service_port: str
    kind: ListenerKind

    @property
    def target(self) -> tuple[str, str, str]:
        """``(namespace, service, port label)``."""
        return (self.namespace, self.service, self.service_port)


@dataclass(slots=True)
class PortStats:
    """Counters of one Service port (all its listeners together).

    Not thread-safe: counted on the proxy's event loop; read it there.
    """

    #: Connections accepted.
    connections: int = 0
    #: Connections being forwarded now.
    active: int = 0
    #: Connections that reached an endpoint.
    forwarded: int = 0
    #: Connections closed at once because the Service port had no endpoint.
    no_endpoint: int = 0
    #: Connections closed because no endpoint accepted the connection.
    unreachable: int = 0
    #: Single connection attempts to an endpoint that failed (the next endpoint was tried).
    connect_failures: int = 0
    #: Forwarded connections per ``address:port``.
    per_endpoint: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        """Connections that could not be forwarded at all."""
        return self.no_endpoint + self.unreachable


def desired_listeners(service: Service, node_address: str) -> list[ListenerSpec]:
    """Every listener a Service needs."""
    specs: list[ListenerSpec] = []
    for port in service.ports:

        def spec(address: str, number: int, kind: ListenerKind, port: ServicePort = port) -> ListenerSpec:
            return ListenerSpec(address, number, service.namespace, service.name, port.label, kind)

        if service.virtual_ip is not None:
            specs.append(spec(service.virtual_ip, port.port, ListenerKind.CLUSTER_IP))
        if service.type.has_node_ports and port.node_port is not None:
            specs.append(spec(node_address, port.node_port, ListenerKind.NODE_PORT))
        if service.load_balancer_ip is not None:
            specs.append(spec(service.load_balancer_ip, port.port, ListenerKind.LOAD_BALANCER_IP))
        specs.extend(spec(ip, port.port, ListenerKind.EXTERNAL_IP) for ip in service.external_ips)
    return specs


class _Listener:
    def __init__(self, spec: ListenerSpec, server: asyncio.Server) -> None:
        self.spec = spec
        self.server = server


class ServiceProxy:
    """Serves a catalog's Services (see module docs). ``await start()``, then ``await close()``.

    ``balancer`` is a balancer instance (shared by every Service port) or a factory such as ``RoundRobin``
    (one balancer per Service port), as everywhere else; checked here (``TypeError``). Thread safety: not
    thread-safe; use it on the event loop of its catalog's registry.
    """

    def __init__(
        self,
        catalog: ServiceCatalog,
        *,
        node_address: str = DEFAULT_NODE_ADDRESS,
        balancer: BalancerSpec = RoundRobin,
        connect_timeout: float = 3.0,
        balancer_factory: Callable[[], Balancer] | None = None,
    ) -> None:
        if balancer_factory is not None:  # the earlier name of ``balancer``
            warnings.warn("ServiceProxy(balancer_factory=...) is deprecated; pass balancer=", DeprecationWarning,
                          stacklevel=2)
            balancer = balancer_factory
        self._catalog = catalog
        self._node_address = node_address
        self._balancer_factory = balancer_factory_of(balancer)
        self._connect_timeout = connect_timeout
        self._listeners: dict[tuple[str, int], _Listener] = {}
        self._balancers: dict[tuple[str, str, str], Balancer] = {}
        self._instance_memo: dict[tuple[str, str, str], tuple[tuple[Endpoint, ...], tuple[Instance, ...]]] = {}
        self._stats: dict[tuple[str, str, str], PortStats] = {}
        self._connections: set[asyncio.Task[None]] = set()
        self._dirty = asyncio.Event()
        self._reconciled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._remove_listener: Callable[[], None] | None = None
        #: Listeners that could not be opened, with the reason (e.g. an external IP that is not local).
        self.failures: dict[ListenerSpec, str] = {}

    @property
    def listeners(self) -> tuple[ListenerSpec, ...]:
        """What the proxy listens on now."""
        return tuple(sorted((entry.spec for entry in self._listeners.values()),
                            key=lambda s: (s.namespace, s.service, s.service_port, s.kind, s.address)))

    def stats(self, namespace: str, service: str, port: str | int) -> PortStats:
        """The counters of a Service port (by name, or by number when unnamed)."""
        return self._stats.setdefault((namespace, service, str(port)), PortStats())

    async def start(self) -> None:
        """Open the listeners of the current Services and follow the catalog."""
        self._remove_listener = self._catalog.add_listener(self._dirty.set)
        self._dirty.set()
        self._task = asyncio.create_task(self._reconcile_forever(), name="discovery-proxy-reconcile")
        await self.settled()

    async def settled(self, timeout: float = 10.0) -> None:
        """Wait until the listeners match the catalog as it is now."""
        async with asyncio.timeout(timeout):
            while self._dirty.is_set() or not self._reconciled.is_set():
                self._reconciled.clear()
                await self._reconciled.wait()

    async def close(self) -> None:
        """Close every listener and cut the open connections."""
        if self._remove_listener is not None:
            self._remove_listener()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for key in list(self._listeners):
            await self._close_listener(key)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def __aenter__(self) -> ServiceProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- listeners -----------------------------------------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._reconcile()
            except Exception:
                log.exception("proxy reconcile failed")
            self._reconciled.set()

    async def _reconcile(self) -> None:
        wanted: dict[tuple[str, int], ListenerSpec] = {}
        for service in self._catalog.services:
            for spec in desired_listeners(service, self._node_address):
                wanted.setdefault((spec.address, spec.port), spec)
        for key, entry in list(self._listeners.items()):
            if wanted.get(key) != entry.spec:
                await self._close_listener(key)
        self.failures = {spec: reason for spec, reason in self.failures.items() if wanted.get(
            (spec.address, spec.port)) == spec}
        for key, spec in wanted.items():
            if key in self._listeners or spec in self.failures:
                continue
            try:
                server = await asyncio.start_server(
                    functools.partial(self._serve, spec), spec.address, spec.port, reuse_address=True
                )
            except OSError as error:
                reason = error.strerror or str(error)
                self.failures[spec] = f"cannot listen on {spec.address}:{spec.port}: {reason}"
                log.warning("%s/%s %s: %s", spec.namespace, spec.service, spec.kind, self.failures[spec])
                continue
            self._listeners[key] = _Listener(spec, server)
            log.info("listening on %s:%d for %s/%s port %s (%s)", spec.address, spec.port, spec.namespace,
                     spec.service, spec.service_port, spec.kind)

    async def _close_listener(self, key: tuple[str, int]) -> None:
        entry = self._listeners.pop(key)
        entry.server.close()  # stops accepting; open connections drain on their own
        log.info("stopped listening on %s:%d", *key)

    # -- connections ---------------------------------------------------------------------------------------------

    async def _serve(self, spec: ListenerSpec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # so that close() can cut open connections
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        stats = self.stats(spec.namespace, spec.service, spec.service_port)
        stats.connections += 1
        endpoints = self._endpoints(spec)
        if not endpoints:
            stats.no_endpoint += 1
            writer.close()  # at once: the client sees EOF instead of a hang
            return
        upstream = await self._connect(spec, endpoints, stats)
        if upstream is None:
            stats.unreachable += 1
            writer.close()
            return
        up_reader, up_writer, endpoint = upstream
        stats.forwarded += 1
        stats.active += 1
        label = f"{endpoint.address}:{endpoint.port}"
        stats.per_endpoint[label] = stats.per_endpoint.get(label, 0) + 1
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # the proxy is closing: end quietly (asyncio's stream callback logs a cancelled handler as an error)
        finally:
            stats.active -= 1
            for stream in (writer, up_writer):
                stream.close()

    def _endpoints(self, spec: ListenerSpec) -> tuple[Endpoint, ...]:
        found = self._catalog.endpoints(spec.namespace, spec.service)
        return () if found is None else found.for_port(spec.service_port)

    def _instances_of(self, target: tuple[str, str, str], endpoints: tuple[Endpoint, ...]) -> tuple[Instance, ...]:
        memo = self._instance_memo.get(target)
        if memo is not None and memo[0] is endpoints:
            return memo[1]
        instances = tuple(e.instance for e in endpoints)
        self._instance_memo[target] = (endpoints, instances)
        return instances

    async def _connect(
        self, spec: ListenerSpec, endpoints: tuple[Endpoint, ...], stats: PortStats
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Endpoint] | None:
        balancer = self._balancers.setdefault(spec.target, self._balancer_factory())
        remaining = endpoints
        while remaining:
            # The first pick sees the same tuple object for as long as the endpoints are unchanged, so a
            # balancer's per-set state (weighted cycle, hash ring) is built once, not per connection.
            instances = self._instances_of(spec.target, remaining)
            picked = balancer.pick(instances)
            endpoint = remaining[instances.index(picked)]
            remaining = tuple(e for e in remaining if e is not endpoint)
            try:
                async with asyncio.timeout(self._connect_timeout):
                    up_reader, up_writer = await asyncio.open_connection(endpoint.address, endpoint.port)
            except (OSError, TimeoutError) as error:
                stats.connect_failures += 1
                log.info("%s/%s: endpoint %s:%d refused: %s", spec.namespace, spec.service, endpoint.address,
                         endpoint.port, error)
                continue
            return up_reader, up_writer, endpoint
        return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close so the other side sees the end too."""
    try:
        while data := await reader.read(_BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
