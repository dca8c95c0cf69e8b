"""httpx transports that resolve service names through a registry (needs the ``[http]`` extra)::

    with Registry.connect(url) as registry:
        with httpx.Client(transport=DiscoveryTransport(registry)) as client:
            client.get("http://orders/api/items")          # or http://orders.<namespace>/...

A host that names a service is resolved by the service's :class:`~discovery.client.cache.ServiceCache` and
balancer: ``orders`` (a service in the transport's namespace), ``orders.<namespace>`` for the namespaces the
transport is configured with (only its own by default), and ``orders.<namespace><suffix>`` for a configured
suffix such as ``.svc`` or ``.svc.cluster.local``. Every other host (``example.com``, ``pypi.org``, IP
literals, ``localhost`` and the ``passthrough`` names) goes straight to the wrapped transport, on the normal
network path: a registrant can never capture a request for an ordinary domain name (the registry is not a
place where anyone may claim ``example.com``).

A connect failure (nothing was sent) is retried on another instance, up to ``attempts`` in all (tenacity).
Every transport error is reported to the failure feedback, every response as a success; a request counts as
in flight until its response is closed. A service without an instance to pick raises
:class:`NoInstanceTransportError`, an ``httpx.TransportError`` (so ``except httpx.HTTPError`` catches it) that
is also a :class:`~discovery.client.balancers.NoInstanceAvailableError`. At most ``max_caches`` services are
followed at once (least recently used closed first).

The ``Host`` header keeps the service name (as a Kubernetes Service's virtual host does); for ``https`` the
TLS server name (SNI) is the service name as well.

Which instance served a request is in ``response.extensions["discovery.instance"]`` (and the number of
instances tried in ``"discovery.attempts"``); a transport error names the instance it came from in its message
and carries it as ``error.discovery_instance``. Picks and retries are logged at DEBUG on
``discovery.client.httpx_transport``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from typing import TYPE_CHECKING

import httpx
from tenacity import AsyncRetrying, Retrying, retry_if_exception_type, stop_after_attempt

from discovery.client.balancers import (
    Balancer,
    BalancerFactory,
    BalancerSpec,
    NoInstanceAvailableError,
    RoundRobin,
    balancer_factory,
)
from discovery.client.cache import ServiceCache
from discovery.client.feedback import DownInstancePolicy, FailureTracker
from discovery.core.errors import ValidationError
from discovery.core.models import DEFAULT_NAMESPACE, Instance
from discovery.core.validation import validate_namespace
from discovery.registry.checks import require_async_registry, require_registry

if TYPE_CHECKING:
    from discovery.registry.async_registry import AsyncRegistry
    from discovery.registry.blocking import Registry

__all__ = [
    "DEFAULT_MAX_CACHES",
    "INSTANCE_EXTENSION",
    "AsyncDiscoveryTransport",
    "BalancerFactory",
    "DiscoveryTransport",
    "NoInstanceTransportError",
    "ServiceRouter",
    "failed_instance",
]

log = logging.getLogger("discovery.client.httpx_transport")

#: The ``response.extensions`` key holding the :class:`~discovery.Instance` that served the request.
INSTANCE_EXTENSION = "discovery.instance"
#: The ``response.extensions`` key holding how many instances were tried (1 when the first pick answered).
ATTEMPTS_EXTENSION = "discovery.attempts"
#: The attribute of a transport error holding the :class:`~discovery.Instance` it came from.
ERROR_INSTANCE_ATTRIBUTE = "discovery_instance"
#: Errors raised before any byte of the request was sent: safe to retry on another instance.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout)

ServiceTarget = tuple[str, str]  # (namespace, service)
#: Hosts whose resolution is remembered (the rule is pure, so this only bounds memory).
_RESOLVED_HOSTS_KEPT = 1024
#: Services a transport follows at once (each is a registry watch); the least recently used is closed first.
DEFAULT_MAX_CACHES = 256


class NoInstanceTransportError(httpx.TransportError, NoInstanceAvailableError):
    """The host names a service that has no instance to pick: an httpx transport error (caught by
    ``except httpx.HTTPError`` like a refused connection) and a :class:`NoInstanceAvailableError`."""


def _suffix(text: str) -> str:
    """``svc.cluster.local`` or ``.svc.cluster.local`` -> ``.svc.cluster.local`` (checked: DNS labels only)."""
    labels = text.strip().strip(".").lower().split(".")
    if not all(_is_dns_label(label) for label in labels):
        raise ValidationError("suffixes", f"{text[:40]!r} is not a DNS suffix such as '.svc.cluster.local'")
    return "." + ".".join(labels)


def failed_instance(error: BaseException) -> Instance | None:
    """The instance a transport error of these transports came from (``None`` for other errors)."""
    instance = getattr(error, ERROR_INSTANCE_ATTRIBUTE, None)
    return instance if isinstance(instance, Instance) else None


def _name_instance(error: httpx.TransportError, instance: Instance) -> None:
    """Make ``error`` say which instance failed: in its message (what a log line or traceback shows) and as an
    attribute (for code). httpx errors keep their message in ``args[0]``.
    """
    where = f"{instance.namespace}/{instance.service} instance {instance.id} at {instance.address}:{instance.port}"
    message = str(error) or type(error).__name__
    error.args = (f"{message} ({where})", *error.args[1:])
    setattr(error, ERROR_INSTANCE_ATTRIBUTE, instance)


def _is_dns_label(text: str) -> bool:
    try:
        validate_namespace(text)  # the same DNS-1123 label rule as a service name
    except ValidationError:
        return False
    return True


class ServiceRouter:
    """Decides which hosts name a service, and which balancer and key each service uses.

    ``namespaces`` are the namespaces a ``service.namespace`` host may name (default: only ``namespace``);
    ``suffixes`` (e.g. ``(".svc", ".svc.cluster.local")``) make ``service.namespace<suffix>`` hosts resolve too,
    in any namespace unless ``namespaces`` is given. Every other host is left to the network.
    ``balancer`` (and each value of ``balancers``, keyed by ``service`` or ``service.namespace``) is a balancer
    instance, shared by every service it applies to, or a factory (e.g. ``RoundRobin``) called once per
    service; anything else is a ``TypeError`` here. Thread-safe: immutable after construction except a bounded
    memo of resolved hosts, whose reads and writes are single dictionary operations (atomic under the GIL).
    """

    def __init__(
        self,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        namespaces: Collection[str] | None = None,
        suffixes: Collection[str] = (),
        passthrough: Collection[str] = ("localhost",),
        balancer: BalancerSpec = RoundRobin,
        balancers: Mapping[str, BalancerSpec] | None = None,
        hash_key: Callable[[httpx.Request], str | None] | None = None,
        port_name: str | None = None,
    ) -> None:
        self.namespace = validate_namespace(namespace)
        self._namespaces_given = namespaces is not None
        self.namespaces = frozenset(validate_namespace(n) for n in namespaces) if namespaces is not None else (
            frozenset({self.namespace}))
        self.suffixes = tuple(sorted({_suffix(s) for s in suffixes}, key=len, reverse=True))
        self.passthrough = frozenset(h.lower() for h in passthrough)
        self.balancer: BalancerFactory = balancer_factory(balancer)
        self.balancers: dict[str, BalancerFactory] = {
            name: balancer_factory(spec, f"balancers[{name!r}]") for name, spec in (balancers or {}).items()
        }
        self.hash_key = hash_key
        self.port_name = port_name
        self._resolved: dict[str, ServiceTarget | None] = {}

    def resolve(self, host: str) -> ServiceTarget | None:
        """``(namespace, service)`` for a host naming a service, else ``None`` (sent as it is)."""
        try:
            return self._resolved[host]
        except KeyError:
            pass
        target = self._resolve(host)
        if len(self._resolved) >= _RESOLVED_HOSTS_KEPT:
            self._resolved.clear()
        self._resolved[host] = target
        return target

    def _resolve(self, host: str) -> ServiceTarget | None:
        host = host.lower()
        if host in self.passthrough:
            return None
        try:
            ipaddress.ip_address(host)
            return None
        except ValueError:
            pass
        host = host.removesuffix(".")
        for suffix in self.suffixes:
            if host.endswith(suffix):
                labels = host.removesuffix(suffix).split(".")
                if (len(labels) == 2 and all(_is_dns_label(label) for label in labels)
                        and (not self._namespaces_given or labels[1] in self.namespaces)):
                    return (labels[1], labels[0])
                return None
        labels = host.split(".")
        if len(labels) == 1 and _is_dns_label(labels[0]):
            return (self.namespace, labels[0])
        if len(labels) == 2 and all(_is_dns_label(label) for label in labels) and labels[1] in self.namespaces:
            return (labels[1], labels[0])
        return None

    def balancer_for(self, target: ServiceTarget) -> Balancer:
        """A new balancer for a service (``balancers`` by ``service.namespace``, then ``service``)."""
        namespace, service = target
        factory = self.balancers.get(f"{service}.{namespace}") or self.balancers.get(service) or self.balancer
        return factory()

    def key_of(self, request: httpx.Request) -> str | None:
        """The hashing key of a request (for :class:`~discovery.client.balancers.ConsistentHash`)."""
        return None if self.hash_key is None else self.hash_key(request)

    def address_of(self, request: httpx.Request, instance: Instance) -> httpx.Request:
        """A copy of ``request`` aimed at ``instance`` (Host header and TLS server name unchanged)."""
        port = instance.port
        if self.port_name is not None:
            port = instance.ports.get(self.port_name, port)
        extensions = dict(request.extensions)
        if request.url.scheme == "https":
            extensions.setdefault("sni_hostname", request.url.host)
        return httpx.Request(
            request.method,
            request.url.copy_with(host=instance.address, port=port),
            headers=request.headers,
            stream=request.stream,
            extensions=extensions,
        )


class _TrackedSyncStream(httpx.SyncByteStream):
    def __init__(self, stream: httpx.SyncByteStream, on_close: Callable[[], None]) -> None:
        self._stream = stream
        self._on_close: Callable[[], None] | None = on_close

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()


class _TrackedAsyncStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, on_close: Callable[[], None]) -> None:
        self._stream = stream
        self._on_close: Callable[[], None] | None = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()


def _pick(cache: ServiceCache, tried: list[Instance], key: str | None, request: httpx.Request) -> Instance:
    try:
        return cache.pick_excluding(tried, key)
    except NoInstanceAvailableError as error:
        raise NoInstanceTransportError(str(error), request=request) from None


def _check_max_caches(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError("max_caches", f"must be an integer >= 1, got {value!r}")
    return value
def _log_pick(request: httpx.Request, instance: Instance, attempt: int) -> None:
    log.debug("%s %s -> %s at %s:%d (attempt %d)", request.method, request.url.host, instance.id,
              instance.address, instance.port, attempt)


def _log_failure(error: httpx.TransportError, attempt: int, attempts: int) -> None:
    if isinstance(error, RETRYABLE_ERRORS) and attempt < attempts:
        log.debug("%s; retrying on another instance", error)
    else:
        log.debug("%s; not retried", error)


def _mark_response(response: httpx.Response, instance: Instance, attempt: int) -> None:
    response.extensions[INSTANCE_EXTENSION] = instance
    response.extensions[ATTEMPTS_EXTENSION] = attempt


def _check_attempts(attempts: int) -> int:
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValidationError("attempts", f"must be an integer >= 1, got {attempts!r}")
    return attempts


class DiscoveryTransport(httpx.BaseTransport):
    """A blocking httpx transport resolving service names through a :class:`~discovery.Registry`.

    ``transport`` is the wrapped transport (default ``httpx.HTTPTransport()``); ``failures`` is the
    down-instance policy shared by this transport's caches; the other keyword arguments are those of
    :class:`ServiceRouter`. Closing the transport closes its caches, not the registry.

    Thread-safe: one transport may serve an ``httpx.Client`` used from several threads (caches open under a lock;
    the retry state is per thread).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        transport: httpx.BaseTransport | None = None,
        attempts: int = 3,
        failures: DownInstancePolicy | None = None,
        router: ServiceRouter | None = None,
        max_caches: int = DEFAULT_MAX_CACHES,
        **router_options: object,
    ) -> None:
        self.registry = require_registry(
            registry, "DiscoveryTransport", "use AsyncDiscoveryTransport with httpx.AsyncClient"
        )
        self.router = router if router is not None else ServiceRouter(**router_options)  # type: ignore[arg-type]
        self.attempts = _check_attempts(attempts)
        self.max_caches = _check_max_caches(max_caches)
        self.failures = FailureTracker(failures)
        self._inner = transport if transport is not None else httpx.HTTPTransport()
        self._caches: OrderedDict[ServiceTarget, ServiceCache] = OrderedDict()
        self._lock = threading.Lock()
        # One Retrying for all requests: tenacity keeps its per-call state thread-local, and a blocking client
        # runs one request at a time per thread.
        self._retrying = Retrying(
            stop=stop_after_attempt(self.attempts), retry=retry_if_exception_type(RETRYABLE_ERRORS), reraise=True
        )

    def cache(self, service: str, namespace: str | None = None) -> ServiceCache:
        """The cache of a service (opened on first use; the least recently used beyond ``max_caches`` is closed).

        A request still using a closed cache finishes on the instances it last knew.
        """
        target = (namespace or self.router.namespace, service)
        evicted: list[ServiceCache] = []
        with self._lock:
            cache = self._caches.get(target)
            if cache is not None:
                self._caches.move_to_end(target)
                return cache
            cache = self._caches[target] = ServiceCache.open(
                self.registry,
                service,
                target[0],
                balancer=self.router.balancer_for(target),
                failures=self.failures,
            )
            while len(self._caches) > self.max_caches:
                evicted.append(self._caches.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return cache

    @property
    def cached_services(self) -> tuple[ServiceTarget, ...]:
        """The ``(namespace, service)`` pairs followed now, least recently used first."""
        with self._lock:
            return tuple(self._caches)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``, resolving its host through the registry when it names a service."""
        target = self.router.resolve(request.url.host)
        if target is None:
            return self._inner.handle_request(request)
        cache = self.cache(target[1], target[0])
        key = self.router.key_of(request)
        tried: list[Instance] = []
        for attempt in self._retrying:
            with attempt:
                instance = _pick(cache, tried, key, request)
                tried.append(instance)
                _log_pick(request, instance, len(tried))
                return self._send(cache, instance, request, len(tried))
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _send(self, cache: ServiceCache, instance: Instance, request: httpx.Request, attempt: int) -> httpx.Response:
        cache.started(instance)
        try:
            response = self._inner.handle_request(self.router.address_of(request, instance))
        except httpx.TransportError as error:
            cache.finished(instance)
            cache.note_error(instance)
            _name_instance(error, instance)
            _log_failure(error, attempt, self.attempts)
            raise
        cache.note_success(instance)
        _mark_response(response, instance, attempt)
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _TrackedSyncStream(response.stream, lambda: cache.finished(instance))
        return response

    def close(self) -> None:
        """Close the caches and the wrapped transport."""
        with self._lock:
            caches, self._caches = list(self._caches.values()), OrderedDict()
        for cache in caches:
            cache.close()
        self._inner.close()


class AsyncDiscoveryTransport(httpx.AsyncBaseTransport):
    """The asyncio form of :class:`DiscoveryTransport`, over an :class:`~discovery.AsyncRegistry` (use it on
    the registry's event loop).

    Not thread-safe: use it on the event loop of its registry.
    """

    def __init__(
        self,
        registry: AsyncRegistry,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        attempts: int = 3,
        failures: DownInstancePolicy | None = None,
        router: ServiceRouter | None = None,
        max_caches: int = DEFAULT_MAX_CACHES,
        **router_options: object,
    ) -> None:
        self.registry = require_async_registry(
            registry, "AsyncDiscoveryTransport", "use DiscoveryTransport with httpx.Client"
        )
        self.router = router if router is not None else ServiceRouter(**router_options)  # type: ignore[arg-type]
        self.attempts = _check_attempts(attempts)
        self.max_caches = _check_max_caches(max_caches)
        self.failures = FailureTracker(failures)
        self._inner = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._caches: OrderedDict[ServiceTarget, ServiceCache] = OrderedDict()
        self._opening: dict[ServiceTarget, asyncio.Task[ServiceCache]] = {}

    async def cache(self, service: str, namespace: str | None = None) -> ServiceCache:
        """The cache of a service (opened on first use; concurrent first requests share one opening; the least
        recently used beyond ``max_caches`` is closed)."""
        target = (namespace or self.router.namespace, service)
        cache = self._caches.get(target)
        if cache is not None:
            self._caches.move_to_end(target)
            return cache
        opening = self._opening.get(target)
        if opening is None:
            opening = self._opening[target] = asyncio.ensure_future(
                ServiceCache.open_async(
                    self.registry,
                    service,
                    target[0],
                    balancer=self.router.balancer_for(target),
                    failures=self.failures,
                )
            )
        try:
            cache = await asyncio.shield(opening)
        finally:
            if opening.done():
                self._opening.pop(target, None)
        self._caches[target] = cache
        self._caches.move_to_end(target)
        while len(self._caches) > self.max_caches:
            await self._caches.popitem(last=False)[1].aclose()
        return cache

    @property
    def cached_services(self) -> tuple[ServiceTarget, ...]:
        """The ``(namespace, service)`` pairs followed now, least recently used first."""
        return tuple(self._caches)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``, resolving its host through the registry when it names a service."""
        target = self.router.resolve(request.url.host)
        if target is None:
            return await self._inner.handle_async_request(request)
        cache = await self.cache(target[1], target[0])
        key = self.router.key_of(request)
        tried: list[Instance] = []
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts), retry=retry_if_exception_type(RETRYABLE_ERRORS), reraise=True
        )
        async for attempt in retrying:
            with attempt:
                instance = _pick(cache, tried, key, request)
                tried.append(instance)
                _log_pick(request, instance, len(tried))
                return await self._send(cache, instance, request, len(tried))
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _send(
        self, cache: ServiceCache, instance: Instance, request: httpx.Request, attempt: int
    ) -> httpx.Response:
        cache.started(instance)
        try:
            response = await self._inner.handle_async_request(self.router.address_of(request, instance))
        except httpx.TransportError as error:
            cache.finished(instance)
            cache.note_error(instance)
            _name_instance(error, instance)
            _log_failure(error, attempt, self.attempts)
            raise
        cache.note_success(instance)
        _mark_response(response, instance, attempt)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _TrackedAsyncStream(response.stream, lambda: cache.finished(instance))
        return response

    async def aclose(self) -> None:
        """Close the caches and the wrapped transport."""
        caches, self._caches = list(self._caches.values()), OrderedDict()
        for cache in caches:
            await cache.aclose()
        await self._inner.aclose()
