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

Defences (see docs/security.md):

* **Ownership**: two Services asking for the same ``address:port`` (or an external/load-balancer address that
  is another Service's ClusterIP) are a conflict, reported in :attr:`ServiceProxy.conflicts` and logged. A
  listener already open keeps its Service; otherwise a ClusterIP or node port (allocated) wins over an external
  or load-balancer address (claimed), and a tie serves nobody. One Service never silently takes another's
  traffic. (``ServiceStore.apply`` refuses such definitions; this covers definitions written around it.)
* **Loops**: an endpoint on one of the proxy's own listening addresses, on the unspecified address, or inside
  the ClusterIP range is refused (logged once); a connection that arrives from one of the proxy's own upstream
  sockets is closed at once (:attr:`PortStats.loops`), whatever route led there.
* **Resources**: at most ``max_connections`` connections at once (more are closed at accept,
  :attr:`PortStats.rejected`); a connection with no byte either way for ``idle_timeout`` seconds, or whose
  second direction is still open ``half_open_timeout`` seconds after the first ended without traffic, is
  closed. Statistics of endpoints and Services that are gone are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import ipaddress
import logging
import resource
import socket
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from discovery.client.balancers import Balancer, BalancerSpec, RoundRobin
from discovery.client.balancers import balancer_factory as balancer_factory_of
from discovery.core.models import Instance
from discovery.core.tasks import cancel_and_wait
from discovery.services.catalog import ServiceCatalog
from discovery.services.endpoints import Endpoint
from discovery.services.model import Service, ServicePort

log = logging.getLogger("discovery.services.proxy")

DEFAULT_NODE_ADDRESS = "127.0.0.1"
#: Seconds without a byte in either direction before a connection is closed (Envoy's TCP proxy default).
DEFAULT_IDLE_TIMEOUT = 3600.0
#: Seconds a connection may stay half-closed (one direction ended) without traffic before it is closed.
DEFAULT_HALF_OPEN_TIMEOUT = 60.0
_BUFFER = 64 * 1024
_RESERVED_DESCRIPTORS = 64  # listeners, the backend connection, logging, DNS...
_MAX_DEFAULT_CONNECTIONS = 10_000

Target = tuple[str, str, str]  # (namespace, service, port label)


def default_max_connections() -> int:
    """The default connection cap: each proxied connection holds two file descriptors, so half of what the
    process may open (minus a reserve), at most 10,000."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _MAX_DEFAULT_CONNECTIONS
    return max(16, min(_MAX_DEFAULT_CONNECTIONS, (soft - _RESERVED_DESCRIPTORS) // 2))


class ListenerKind(enum.StrEnum):
    """Why the proxy listens on an address."""

    CLUSTER_IP = "clusterIP"
    NODE_PORT = "nodePort"
    LOAD_BALANCER_IP = "loadBalancerIP"
    EXTERNAL_IP = "externalIP"

    @property
    def allocated(self) -> bool:
        """ClusterIPs and node ports are handed out by the store; external and load-balancer addresses are
        claimed by whoever writes the manifest."""
        return self in (ListenerKind.CLUSTER_IP, ListenerKind.NODE_PORT)


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
    def target(self) -> Target:
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
    #: Connections closed at once because the Service port had no (usable) endpoint.
    no_endpoint: int = 0
    #: Connections closed because no endpoint accepted the connection.
    unreachable: int = 0
    #: Single connection attempts to an endpoint that failed (the next endpoint was tried).
    connect_failures: int = 0
    #: Connections closed at accept because the proxy had ``max_connections`` open.
    rejected: int = 0
    #: Connections closed at accept because they came from the proxy itself (an endpoint leading back to it).
    loops: int = 0
    #: Connections closed after ``idle_timeout`` / ``half_open_timeout`` without traffic.
    idle_timeouts: int = 0
    half_open_timeouts: int = 0
    #: Forwarded connections per current endpoint ``address:port`` (endpoints that are gone are dropped).
    per_endpoint: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        """Connections that could not be forwarded at all."""
        return self.no_endpoint + self.unreachable + self.rejected + self.loops


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


def _unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def _loopback(address: str) -> bool:
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _normalised(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address.lower()


def _describe(spec: ListenerSpec) -> str:
    return f"Service {spec.namespace}/{spec.service} ({spec.kind.value} {spec.address}:{spec.port})"


def arbitrate(
    specs: list[ListenerSpec], incumbents: set[ListenerSpec]
) -> tuple[dict[tuple[str, int], ListenerSpec], dict[ListenerSpec, str]]:
    """Which spec serves each ``address:port``, and why the others do not (see the module docs)."""
    conflicts: dict[ListenerSpec, str] = {}
    cluster_owner: dict[str, ListenerSpec] = {}
    for spec in specs:
        if spec.kind is ListenerKind.CLUSTER_IP:
            cluster_owner.setdefault(spec.address, spec)
    candidates: list[ListenerSpec] = []
    for spec in specs:
        owner = cluster_owner.get(spec.address)
        if (spec.kind in (ListenerKind.EXTERNAL_IP, ListenerKind.LOAD_BALANCER_IP) and owner is not None
                and (owner.namespace, owner.service) != (spec.namespace, spec.service)):
            conflicts[spec] = (f"conflict: {spec.address} is the clusterIP of Service {owner.namespace}/"
                               f"{owner.service}; not served for Service {spec.namespace}/{spec.service}")
            continue
        candidates.append(spec)
    by_port: dict[int, list[ListenerSpec]] = defaultdict(list)
    for spec in candidates:
        by_port[spec.port].append(spec)
    wanted: dict[tuple[str, int], ListenerSpec] = {}
    for group in by_port.values():
        if any(_unspecified(spec.address) for spec in group):
            contests = [group]  # a wildcard listener overlaps every address of its port
        else:
            by_address: dict[str, list[ListenerSpec]] = defaultdict(list)
            for spec in group:
                by_address[spec.address].append(spec)
            contests = list(by_address.values())
        for contest in contests:
            winner = _winner(contest, incumbents)
            for spec in contest:
                if spec.target == winner:
                    wanted.setdefault((spec.address, spec.port), spec)
                else:
                    others = sorted({_describe(s) for s in contest if s.target != spec.target})
                    served = "nobody is served there" if winner is None else f"{winner[0]}/{winner[1]} keeps it"
                    conflicts[spec] = (f"conflict: {spec.address}:{spec.port} of {_describe(spec)} is also claimed by "
                                       f"{', '.join(others)}; {served}")
    return wanted, conflicts


def _winner(contest: list[ListenerSpec], incumbents: set[ListenerSpec]) -> Target | None:
    targets = {spec.target for spec in contest}
    if len(targets) == 1:
        return next(iter(targets))
    serving = {spec.target for spec in contest if spec in incumbents}
    if len(serving) == 1:
        return next(iter(serving))
    allocated = {spec.target for spec in contest if spec.kind.allocated}
    if len(allocated) == 1:
        return next(iter(allocated))
    return None


class _Listener:
    def __init__(self, spec: ListenerSpec, server: asyncio.Server) -> None:
        self.spec = spec
        self.server = server


class _Deadline:
    """The idle deadline of one connection: pushed back by traffic, shortened once a direction has ended."""

    def __init__(self, timeout: asyncio.Timeout, idle: float, half_open: float) -> None:
        self._timeout = timeout
        self._period = idle
        self._half_open = half_open
        self._loop = asyncio.get_running_loop()
        self.half_closed = False

    def touch(self) -> None:
        # Not once the deadline has fired or the connection is ending: asyncio refuses to reschedule then.
        with contextlib.suppress(RuntimeError):
            self._timeout.reschedule(self._loop.time() + self._period)

    def one_side_ended(self) -> None:
        if not self.half_closed:
            self.half_closed = True
            self._period = min(self._period, self._half_open)
            self.touch()


class ServiceProxy:
    """Serves a catalog's Services (see module docs). ``await start()``, then ``await close()``.

    ``cluster_ip_range`` (default: the catalog's store's range) is where no endpoint may be;
    ``max_connections`` (default :func:`default_max_connections`), ``idle_timeout`` and ``half_open_timeout``
    bound what clients can hold.
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
        max_connections: int | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        half_open_timeout: float = DEFAULT_HALF_OPEN_TIMEOUT,
        cluster_ip_range: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None,
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
        self.max_connections = default_max_connections() if max_connections is None else max_connections
        self._idle_timeout = idle_timeout
        self._half_open_timeout = half_open_timeout
        self._requested_cluster_ip_range = cluster_ip_range
        self._listeners: dict[tuple[str, int], _Listener] = {}
        self._balancers: dict[Target, Balancer] = {}
        self._instance_memo: dict[Target, tuple[tuple[Endpoint, ...], tuple[Instance, ...]]] = {}
        self._usable_memo: dict[Target, tuple[tuple[Endpoint, ...], tuple[Endpoint, ...]]] = {}
        self._stats: dict[Target, PortStats] = {}
        self._connections: set[asyncio.Task[None]] = set()
        self._open = 0
        self._upstream_ports: set[int] = set()
        self._dirty = asyncio.Event()
        self._reconciled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._remove_listener: Callable[[], None] | None = None
        #: Listeners that could not be opened, with the reason (e.g. an external IP that is not local).
        self.failures: dict[ListenerSpec, str] = {}
        #: Listeners not opened because another Service claims the same address (see the module docs).
        self.conflicts: dict[ListenerSpec, str] = {}
        #: Endpoints not used, by ``(namespace, service, port label, "address:port")``, with the reason.
        self.refused_endpoints: dict[tuple[str, str, str, str], str] = {}


    @property
    def _cluster_ip_range(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        # read when needed, not at construction: the catalog's ranges are its store's, fixed once it exists
        if self._requested_cluster_ip_range is not None:
            return self._requested_cluster_ip_range
        return self._catalog.ranges.cluster_ips

    @property
    def listeners(self) -> tuple[ListenerSpec, ...]:
        """What the proxy listens on now."""
        return tuple(sorted((entry.spec for entry in self._listeners.values()),
                            key=lambda s: (s.namespace, s.service, s.service_port, s.kind, s.address)))

    @property
    def open_connections(self) -> int:
        """Client connections being served now (connecting or forwarding)."""
        return self._open

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
            await cancel_and_wait(self._task)
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
        specs = [spec for service in self._catalog.services
                 for spec in desired_listeners(service, self._node_address)]
        incumbents = {entry.spec for entry in self._listeners.values()}
        wanted, conflicts = arbitrate(specs, incumbents)
        for spec, reason in conflicts.items():
            if spec not in self.conflicts:
                log.warning("%s", reason)
        self.conflicts = conflicts
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
        self._prune({spec.target for spec in specs})

    def _prune(self, targets: set[Target]) -> None:
        """Drop the state of Service ports and endpoints that are gone (it would grow with churn)."""
        for table in (self._stats, self._balancers, self._instance_memo, self._usable_memo):
            for target in [t for t in table if t not in targets]:
                del table[target]
        for target, stats in self._stats.items():
            found = self._catalog.endpoints(target[0], target[1])
            current = {f"{e.address}:{e.port}" for e in (found.for_port(target[2]) if found is not None else ())}
            for label in [label for label in stats.per_endpoint if label not in current]:
                del stats.per_endpoint[label]
        self.refused_endpoints = {key: reason for key, reason in self.refused_endpoints.items()
                                  if key[:3] in targets}

    async def _close_listener(self, key: tuple[str, int]) -> None:
        entry = self._listeners.pop(key)
        entry.server.close()  # stops accepting; open connections drain on their own
        log.info("stopped listening on %s:%d", *key)

    # -- endpoints -------------------------------------------------------------------------------------------------

    def _endpoints(self, spec: ListenerSpec) -> tuple[Endpoint, ...]:
        found = self._catalog.endpoints(spec.namespace, spec.service)
        endpoints = () if found is None else found.for_port(spec.service_port)
        memo = self._usable_memo.get(spec.target)
        if memo is not None and memo[0] is endpoints:
            return memo[1]
        usable = []
        for endpoint in endpoints:
            reason = self._refusal(endpoint)
            if reason is None:
                usable.append(endpoint)
                continue
            key = (*spec.target, f"{endpoint.address}:{endpoint.port}")
            if key not in self.refused_endpoints:
                log.warning("%s/%s port %s: endpoint %s:%d of instance %s refused: it %s", spec.namespace,
                            spec.service, spec.service_port, endpoint.address, endpoint.port, endpoint.instance.id,
                            reason)
            self.refused_endpoints[key] = reason
        self._usable_memo[spec.target] = (endpoints, tuple(usable))
        return tuple(usable)

    def _refusal(self, endpoint: Endpoint) -> str | None:
        """Why connecting to ``endpoint`` would loop back into the proxy (``None``: it would not)."""
        address = _normalised(endpoint.address)
        try:
            parsed: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(address)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.is_unspecified:
            return "is the unspecified address (this host)"
        cluster_ips = self._cluster_ip_range
        if parsed is not None and parsed in cluster_ips:
            return f"lies inside the ClusterIP range {cluster_ips}"
        if (address, endpoint.port) in self._listeners:
            return "is one of the proxy's own listening addresses"
        if _loopback(address) and any(_unspecified(a) and p == endpoint.port for a, p in self._listeners):
            return "is one of the proxy's own listening addresses (a wildcard listener)"
        return None

    # -- connections ---------------------------------------------------------------------------------------------

    async def _serve(self, spec: ListenerSpec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats = self.stats(spec.namespace, spec.service, spec.service_port)
        stats.connections += 1
        if self._open >= self.max_connections:
            stats.rejected += 1
            writer.close()  # at once: the client sees EOF, the descriptors are free again
            return
        if self._from_ourselves(writer):
            stats.loops += 1
            log.warning("%s/%s port %s: a connection from the proxy itself (an endpoint leads back to it); closed",
                        spec.namespace, spec.service, spec.service_port)
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:  # so that close() can cut open connections
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        self._open += 1
        try:
            await self._proxy(spec, stats, reader, writer)
        finally:
            self._open -= 1

    def _from_ourselves(self, writer: asyncio.StreamWriter) -> bool:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        if not isinstance(peer, tuple) or not isinstance(local, tuple) or peer[1] not in self._upstream_ports:
            return False
        return _loopback(str(peer[0])) or _normalised(str(peer[0])) == _normalised(str(local[0]))

    async def _proxy(self, spec: ListenerSpec, stats: PortStats, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
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
        up_reader, up_writer, endpoint, local_port = upstream
        stats.forwarded += 1
        stats.active += 1
        label = f"{endpoint.address}:{endpoint.port}"
        stats.per_endpoint[label] = stats.per_endpoint.get(label, 0) + 1
        deadline: _Deadline | None = None
        try:
            async with asyncio.timeout(self._idle_timeout) as timeout:
                deadline = _Deadline(timeout, self._idle_timeout, self._half_open_timeout)
                await asyncio.gather(_pipe(reader, up_writer, deadline), _pipe(up_reader, writer, deadline))
        except TimeoutError:
            if deadline is not None and deadline.half_closed:
                stats.half_open_timeouts += 1
            else:
                stats.idle_timeouts += 1
        except asyncio.CancelledError:
            pass  # the proxy is closing: end quietly (asyncio's stream callback logs a cancelled handler as an error)
        finally:
            stats.active -= 1
            self._upstream_ports.discard(local_port)
            for stream in (writer, up_writer):
                stream.close()

    def _instances_of(self, target: Target, endpoints: tuple[Endpoint, ...]) -> tuple[Instance, ...]:
        memo = self._instance_memo.get(target)
        if memo is not None and memo[0] is endpoints:
            return memo[1]
        instances = tuple(e.instance for e in endpoints)
        self._instance_memo[target] = (endpoints, instances)
        return instances

    async def _connect(
        self, spec: ListenerSpec, endpoints: tuple[Endpoint, ...], stats: PortStats
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Endpoint, int] | None:
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
                    return await self._open_upstream(endpoint)
            except (OSError, TimeoutError) as error:
                stats.connect_failures += 1
                log.info("%s/%s: endpoint %s:%d refused: %s", spec.namespace, spec.service, endpoint.address,
                         endpoint.port, error)
        return None

    async def _open_upstream(
        self, endpoint: Endpoint
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Endpoint, int]:
        """Connect from a socket whose local port is known before the connection exists, so that a connection
        that comes back to one of our listeners is recognised at accept (no race with the connect)."""
        loop = asyncio.get_running_loop()
        addresses: Sequence[tuple[Any, ...]]  # getaddrinfo's (family, type, proto, canonname, sockaddr)
        try:
            literal = ipaddress.ip_address(endpoint.address)
        except ValueError:  # a host name: resolve (in asyncio's executor)
            addresses = await loop.getaddrinfo(endpoint.address, endpoint.port, type=socket.SOCK_STREAM)
        else:  # the usual case: no resolver round trip per connection
            if literal.version == 6:
                addresses = [(socket.AF_INET6, socket.SOCK_STREAM, 0, "", (endpoint.address, endpoint.port, 0, 0))]
            else:
                addresses = [(socket.AF_INET, socket.SOCK_STREAM, 0, "", (endpoint.address, endpoint.port))]
        last_error: OSError = OSError(f"no address for {endpoint.address}")
        for family, kind, proto, _name, address in addresses:
            sock = socket.socket(family, kind, proto)
            local_port = 0
            try:
                sock.setblocking(False)
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
                local_port = int(sock.getsockname()[1])
                self._upstream_ports.add(local_port)
                await loop.sock_connect(sock, address)
                reader, writer = await asyncio.open_connection(sock=sock, limit=_BUFFER)
            except OSError as error:
                self._upstream_ports.discard(local_port)
                sock.close()
                last_error = error
                continue
            except BaseException:
                self._upstream_ports.discard(local_port)
                sock.close()
                raise
            return reader, writer, endpoint, local_port
        raise last_error


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deadline: _Deadline) -> None:
    """Copy until EOF, then half-close so the other side sees the end too; every chunk pushes the deadline."""
    try:
        while data := await reader.read(_BUFFER):
            deadline.touch()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
    deadline.one_side_ended()  # not when cancelled: a fired deadline is not a half-close
