"""ASGI lifespan helper: register the service when the app starts, drain it when the app stops.

FastAPI / Starlette (their ``lifespan=`` argument takes this object)::

    service = ServiceLifespan(Instance("orders", "orders-1", "10.1.2.3", 8080), url="etcd://127.0.0.1:2379")
    app = FastAPI(lifespan=service)

Any ASGI app (also counts requests in flight, so the drain ends as soon as the last one finished)::

    app = ServiceLifespan(instance, url=...).wrap(app)                       # the app handles lifespan too
    app = ServiceLifespan(instance, url=...).wrap(app, app_lifespan=False)   # the app knows no lifespan

Startup: connect (when given a URL rather than a registry), register, start the optional health check.
Shutdown: stop the health check, :func:`~discovery.client.lifecycle.drain_async` (``DRAINING``, wait for requests in
flight or ``drain_timeout``, deregister), close the registry if this helper opened it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from discovery.client.lifecycle import AsyncHealthCheck, DrainResult, drain_async
from discovery.core.models import Instance
from discovery.core.urls import BackendURL
from discovery.registry.async_registry import AsyncRegistry
from discovery.registry.checks import require_async_registry
from discovery.registry.registration import AsyncRegistration

__all__ = ["ASGIApp", "ServiceLifespan"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: An ASGI 3 application.
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_COUNTED_SCOPES = frozenset({"http", "websocket"})


class ServiceLifespan:
    """Registers ``instance`` for the life of an ASGI app, and drains it at shutdown.

    Give either ``registry`` (an :class:`~discovery.AsyncRegistry` you manage) or ``url`` (``None`` means
    ``$DISCOVERY_URL``, else ``memory://``; the helper connects and closes it). ``health_check`` is an
    optional callable (sync or async) run every ``health_interval`` seconds to flip the registration between
    ``UP`` and ``DOWN``.
    """

    def __init__(
        self,
        instance: Instance,
        *,
        url: str | BackendURL | None = None,
        registry: AsyncRegistry | None = None,
        ttl: float | None = None,
        drain_timeout: float = 10.0,
        settle: float = 1.0,
        health_check: Callable[[], bool] | Callable[[], Awaitable[bool]] | None = None,
        health_interval: float = 5.0,
    ) -> None:
        self.instance = instance
        self.url = url
        self.ttl = ttl
        self.drain_timeout = drain_timeout
        self.settle = settle
        self.health_check = health_check
        self.health_interval = health_interval
        self._given_registry = (
            None if registry is None else require_async_registry(
                registry, "ServiceLifespan(registry=...)", "pass an AsyncRegistry, or url="
            )
        )
        self._registry: AsyncRegistry | None = None
        self._registration: AsyncRegistration | None = None
        self._health: AsyncHealthCheck | None = None
        self._in_flight = 0

    @property
    def registry(self) -> AsyncRegistry | None:
        """The registry in use (after startup)."""
        return self._registry

    @property
    def registration(self) -> AsyncRegistration | None:
        """The live registration (after startup)."""
        return self._registration

    @property
    def in_flight(self) -> int:
        """Requests being served right now (counted by :meth:`wrap`)."""
        return self._in_flight

    async def startup(self) -> AsyncRegistration:
        """Connect if needed, register the instance, start the health check."""
        registry = self._given_registry
        if registry is None:
            registry = await AsyncRegistry.connect(self.url)
        self._registry = registry
        try:
            self._registration = await registry.register(self.instance, self.ttl)
        except BaseException:
            if self._given_registry is None:
                await registry.close()
            raise
        if self.health_check is not None:
            self._health = AsyncHealthCheck(self._registration, self.health_check, self.health_interval).start()
        return self._registration

    async def shutdown(self) -> DrainResult:
        """Stop the health check, drain the registration, close the registry if this helper opened it."""
        result = DrainResult(0.0, True)
        try:
            if self._health is not None:
                await self._health.stop()
                self._health = None
            if self._registration is not None:
                result = await drain_async(
                    self._registration, self.drain_timeout, idle=lambda: self._in_flight == 0, settle=self.settle
                )
        finally:
            if self._registry is not None and self._given_registry is None:
                await self._registry.close()
            self._registry = None
        return result

    def __call__(self, app: object) -> contextlib.AbstractAsyncContextManager[None]:
        """The Starlette / FastAPI ``lifespan`` protocol: ``FastAPI(lifespan=service_lifespan)``."""
        return self._lifespan()

    @contextlib.asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    def wrap(self, app: ASGIApp, *, app_lifespan: bool = True) -> ASGIApp:
        """``app`` wrapped: registration on startup (after the app's own startup completed), drain on
        shutdown (before the app's own shutdown), and requests in flight counted for the drain.
        With ``app_lifespan=False`` the app never sees lifespan events (for apps that do not support them).
        """

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            kind = scope["type"]
            if kind == "lifespan":
                if app_lifespan:
                    await self._around_app_lifespan(app, scope, receive, send)
                else:
                    await self._own_lifespan(receive, send)
            elif kind in _COUNTED_SCOPES:
                self._in_flight += 1
                try:
                    await app(scope, receive, send)
                finally:
                    self._in_flight -= 1
            else:
                await app(scope, receive, send)

        return wrapped

    async def _around_app_lifespan(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_and_drain() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.shutdown()
            return message

        async def send_after_registering(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self.startup()
                except Exception as error:
                    await send({"type": "lifespan.startup.failed", "message": f"discovery: {error}"})
                    return
            await send(message)

        await app(scope, receive_and_drain, send_after_registering)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    await send({"type": "lifespan.startup.failed", "message": f"discovery: {error}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as error:
                    await send({"type": "lifespan.shutdown.failed", "message": f"discovery: {error}"})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return
