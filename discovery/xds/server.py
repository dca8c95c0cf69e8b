"""``XdsServer``: an asyncio Aggregated Discovery Service (Envoy v3, state of the world) over one registry.

    async with AsyncRegistry.connect(url) as registry, XdsServer(registry, port=18000) as server:
        await server.serve_forever()       # gRPC clients dial xds:///orders with a bootstrap naming it

It runs on the registry's event loop (grpc.aio). Each client stream is an :class:`AdsStream`; resources come
from one shared :class:`XdsModel`, so a change is derived and packed once and then sent to every stream that
watches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import grpc  # type: ignore[import-untyped]
from envoy.service.discovery.v3 import ads_pb2_grpc

from discovery.core.errors import ConfigurationError
from discovery.registry.async_registry import AsyncRegistry
from discovery.services.model import CLUSTER_DOMAIN
from discovery.xds.model import DEFAULT_RESCAN_INTERVAL, XdsModel
from discovery.xds.resources import LbPolicy
from discovery.xds.security import ServerTLS, TokenCheck
from discovery.xds.stream import AdsStream, StreamInfo

log = logging.getLogger("discovery.xds")

_SERVER_OPTIONS = [
    # Clients that vanish without closing their connection are noticed, and their watches released.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def new_boot_id() -> str:
    """A prefix for every version a server instance sends: unique across restarts and replicas."""
    return f"{int(time.time() * 1000):x}-{secrets.token_hex(4)}"


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    async def StreamAggregatedResources(  # the generated gRPC method name
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> None:
        await self._server.run_stream(request_iterator, context)


class XdsServer:
    """Serves LDS, RDS, CDS and EDS over ADS for ``xds:///`` targets (see :mod:`discovery.xds.names`).

    ``tls`` makes it a TLS server (with ``tls.client_ca``: clients need a certificate that CA signed);
    ``token``: clients must send ``authorization: Bearer <token>`` (requires ``tls``). ``lb_policy`` is the
    Clusters' policy. ``rescan_interval`` is how often a Service target's namespace is re-listed for new
    service names.
    """

    def __init__(
        self,
        registry: AsyncRegistry,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ServerTLS | None = None,
        token: str | None = None,
        cluster_domain: str = CLUSTER_DOMAIN,
        lb_policy: LbPolicy | str = LbPolicy.ROUND_ROBIN,
        rescan_interval: float = DEFAULT_RESCAN_INTERVAL,
    ) -> None:
        if token is not None and tls is None:
            raise ConfigurationError("token: a token needs TLS (gRPC sends call credentials only over TLS, and a "
                                     "token in plain text would leak)")
        try:
            policy = LbPolicy(lb_policy)
        except ValueError:
            raise ConfigurationError(
                f"lb_policy: {str(lb_policy)[:40]!r} is not one of {', '.join(p.value for p in LbPolicy)}"
            ) from None
        self._registry = registry
        self._host = host
        self._requested_port = port
        self._tls = tls
        self._token = TokenCheck(token) if token is not None else None
        self.model = XdsModel(registry, cluster_domain=cluster_domain, lb_policy=policy,
                              rescan_interval=rescan_interval)
        self.boot_id = new_boot_id()
        self._sequence = 0
        self._streams: set[AdsStream] = set()
        self._server: Any = None
        self._port: int | None = None
        self._stopped = asyncio.Event()

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("the xDS server is not started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` as a client's bootstrap names it."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    @property
    def streams(self) -> tuple[StreamInfo, ...]:
        """What is known of every open client stream."""
        return tuple(stream.info() for stream in self._streams)

    def next_version(self) -> str:
        """A fresh version (and nonce) for one reply."""
        self._sequence += 1
        return f"{self.boot_id}-{self._sequence}"

    async def start(self) -> None:
        """Bind and start serving. ``ConfigurationError`` for unreadable TLS files or a port that cannot be bound."""
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), server)
        bind = f"[{self._host}]:{self._requested_port}" if ":" in self._host else f"{self._host}:{self._requested_port}"
        try:
            if self._tls is not None:
                cert, key, client_ca = self._tls.load()
                credentials = grpc.ssl_server_credentials(
                    [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None)
                port = server.add_secure_port(bind, credentials)
            else:
                port = server.add_insecure_port(bind)
        except RuntimeError as error:
            raise ConfigurationError(f"cannot listen on {bind}: {error}") from None
        if not port:
            raise ConfigurationError(f"cannot listen on {bind}")
        await server.start()
        self._server = server
        self._port = port
        log.info("xDS server on %s (%s)", self.address, "TLS" if self._tls else "plain text")

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` is called."""
        await self._stopped.wait()

    async def close(self, grace: float = 0.5) -> None:
        """Stop serving (open streams end) and stop following the registry."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self.model.close()
        self._stopped.set()

    async def __aenter__(self) -> XdsServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def run_stream(self, request_iterator: AsyncIterator[Any], context: Any) -> None:
        """Serve one ADS stream until the client ends it."""
        peer = str(context.peer())[:100]
        if self._token is not None:
            metadata = dict(context.invocation_metadata() or ())
            if not self._token.accepts(metadata.get("authorization")):
                log.warning("refused an xDS stream from %s: missing or wrong token", peer)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
        stream = AdsStream(self.model, self.next_version, peer)
        self._streams.add(stream)
        reader = asyncio.create_task(self._read(stream, request_iterator), name=f"discovery-xds-read-{peer}")
        try:
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if reader.done():
                    break
                for response in stream.replies():
                    await context.write(response)
            reader.result()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self._streams.discard(stream)
            await stream.close()

    async def _read(self, stream: AdsStream, request_iterator: AsyncIterator[Any]) -> None:
        try:
            async for request in request_iterator:
                await stream.handle(request)
        finally:
            stream.wake.set()  # the writer loop ends with the reader
