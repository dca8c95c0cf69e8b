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

Servers such as uvicorn close their listening socket and wait for open connections *before* they send
``lifespan.shutdown``, so a drain started there comes after the port stopped accepting. With
``drain_on_signal=True`` (the default) startup therefore also hooks the server's own SIGTERM/SIGINT handler: on the
signal the instance goes ``DRAINING`` at once, ``settle`` seconds pass with the port still serving (clients' watches
see the change and stop picking it), and only then does the server's handler run and the server close its port.
See docs/decisions/client-asgi-lifespan.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from types import FrameType
from typing import Any

from discovery.client.lifecycle import AsyncHealthCheck, DrainResult, drain_async
from discovery.core.errors import DiscoveryError
from discovery.core.models import Instance, Status
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
#: The signals ASGI servers shut down on (uvicorn, hypercorn: both).
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger("discovery.client.asgi")

SignalHandler = Callable[[int, FrameType | None], Any]


class ServiceLifespan:
    """Registers ``instance`` for the life of an ASGI app, and drains it at shutdown.

    Give either ``registry`` (an :class:`~discovery.AsyncRegistry` you manage) or ``url`` (``None`` means
    ``$DISCOVERY_URL``, else ``memory://``; the helper connects and closes it). ``health_check`` is an
    optional callable (sync or async) run every ``health_interval`` seconds to flip the registration between
    ``UP`` and ``DOWN``. ``drain_on_signal`` hooks the server's shutdown signal so the drain begins while the
    port still accepts (see the module docs); it applies only when the server installed a Python signal handler
    and the app starts on the main thread, as uvicorn does.

    Thread safety: not thread-safe; the server drives it from its event loop.
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
        drain_on_signal: bool = True,
    ) -> None:
        self.instance = instance
        self.drain_on_signal = drain_on_signal
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
        self._server_handlers: dict[int, SignalHandler] = {}
        self._predrain: asyncio.Future[None] | None = None
        self._signal_loop: asyncio.AbstractEventLoop | None = None
        self._predrained = False

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
        if self.drain_on_signal:
            self._hook_server_signals()
        return self._registration

    # -- draining on the server's shutdown signal, before it closes its port -----------------------------------------

    def _hook_server_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.debug("not on the main thread: the drain starts at lifespan.shutdown, after the port closed")
            return
        self._signal_loop = asyncio.get_running_loop()
        for signum in SHUTDOWN_SIGNALS:
            current = signal.getsignal(signum)
            # Only a handler a server installed: Python's defaults (SIG_DFL, SIG_IGN, KeyboardInterrupt) are left.
            if callable(current) and current is not signal.default_int_handler:
                self._server_handlers[signum] = current
                signal.signal(signum, self._on_shutdown_signal)
        if self._server_handlers:
            log.debug("draining on %s before the server closes its port",
                      "/".join(signal.Signals(s).name for s in self._server_handlers))

    def _unhook_server_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._server_handlers.items():
            if signal.getsignal(signum) == self._on_shutdown_signal:
                signal.signal(signum, handler)
        self._server_handlers.clear()

    def _on_shutdown_signal(self, signum: int, frame: FrameType | None) -> None:
        handler = self._server_handlers.get(signum)
        registration = self._registration
        if self._predrain is not None or registration is None or handler is None:
            if handler is not None:
                handler(signum, frame)  # a second signal: the server's own meaning (uvicorn: force exit on ^C)
            return
        loop = self._signal_loop
        if loop is None or loop.is_closed():
            handler(signum, frame)
            return
        # A signal handler may interrupt the loop anywhere: only hand the work over, the way the loop's own
        # signal handling does.
        self._predrain = loop.create_future()  # marks "started" until the task replaces it
        loop.call_soon_threadsafe(self._start_predrain, registration, handler, signum, frame)

    def _start_predrain(
        self, registration: AsyncRegistration, handler: SignalHandler, signum: int, frame: FrameType | None
    ) -> None:
        self._predrain = asyncio.ensure_future(self._drain_then_hand_over(registration, handler, signum, frame))

    async def _drain_then_hand_over(
        self, registration: AsyncRegistration, handler: SignalHandler, signum: int, frame: FrameType | None
    ) -> None:
        try:
            log.info("%s: %s set DRAINING; the server closes its port in %g s", signal.Signals(signum).name,
                     "/".join(registration.instance.key), self.settle)
            try:
                await registration.update(status=Status.DRAINING)
                self._predrained = True
            except DiscoveryError as error:
                log.warning("could not set DRAINING before shutdown: %s", error)
            await asyncio.sleep(self.settle)  # clients' watches see DRAINING while the port still serves
        finally:
            handler(signum, frame)

    async def shutdown(self) -> DrainResult:
        """Stop the health check, drain the registration, close the registry if this helper opened it."""
        result = DrainResult(0.0, True)
        try:
            if self._health is not None:
                await self._health.stop()
                self._health = None
            self._unhook_server_signals()
            if self._registration is not None:
                # After a drain on the signal, clients have had their settle time: deregister once idle.
                settle = 0.0 if self._predrained else self.settle
                result = await drain_async(
                    self._registration, self.drain_timeout, idle=lambda: self._in_flight == 0, settle=settle
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
