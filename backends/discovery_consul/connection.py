"""The few Consul HTTP calls the backend makes, on py-consul's ``consul.aio``, with errors translated.

Every call has a deadline (``asyncio.timeout``) and raises only discovery errors: transport failures and
Consul 5xx answers become :class:`BackendUnavailableError` (retryable), ACL refusals become
:class:`PermissionDeniedError` / :class:`AuthenticationError`, and "this check is unknown to the agent"
becomes :class:`UnknownToAgentError`, the signal to register again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar, cast

import aiohttp
import consul
import consul.aio
from consul.callback import CB
from consul.exceptions import ACLDisabled, ACLPermissionDenied, BadRequest, ConsulException, NotFound

from discovery.core.errors import (
    AuthenticationError,
    BackendUnavailableError,
    DiscoveryError,
    DiscoveryTLSError,
    PermissionDeniedError,
    ValidationError,
)
from discovery.core.urls import TLSOptions

T = TypeVar("T")

# Consul 1.8 answers 500 "CheckID ... does not have associated TTL" for a TTL update of a check it does not
# know; newer versions answer 404 "Unknown check ID". Both mean: the agent forgot us.
_UNKNOWN_CHECK_MARKERS = ("does not have associated TTL", "Unknown check", "Unknown service")

#: Connections the blocking-query pool may open: one per watched service (and definitions kind) at most, so in
#: practice bounded by what the process watches; the number only keeps aiohttp from queueing them.
BLOCKING_CONNECTIONS = 100_000
#: With this many blocking queries open, an agent hanging up is likely its per-client connection limit.
_MANY_PARKED = 100


class UnknownToAgentError(DiscoveryError):
    """The agent does not know the service or check (e.g. it restarted and lost its state)."""


class ConsulClient:
    """An async Consul client for one agent. Create it inside the running event loop."""

    def __init__(
        self, host: str, port: int, *, token: str | None, dc: str | None, timeout: float, tls: TLSOptions | None = None
    ) -> None:
        self._agent_address = f"{host}:{port}"
        self._timeout = timeout
        self._uses_tls = tls is not None
        # Two pools: a blocking query parks its HTTP connection for up to ``wait`` seconds, one per watched
        # service, so sharing aiohttp's default 100-connection pool would queue heartbeats, registrations and
        # the 101st watch behind them (docs/decisions/consul-connection-pools.md).
        self._consul = self._connect(host, port, dc, tls, limit=None)
        self._blocking = self._connect(host, port, dc, tls, limit=BLOCKING_CONNECTIONS)
        self._parked = 0  # blocking queries in flight
        if token is not None:
            # py-consul lets $CONSUL_HTTP_TOKEN win over its argument; a token in the URL must win.
            self._consul.token = token
            self._blocking.token = token

    @staticmethod
    def _connect(host: str, port: int, dc: str | None, tls: TLSOptions | None, limit: int | None) -> consul.aio.Consul:
        if tls is None:
            return consul.aio.Consul(host=host, port=port, scheme="http", dc=dc, verify=False, connections_limit=limit)
        # py-consul builds an ssl.create_default_context() (certificate and host name checked) and adds ca.
        client_cert = (tls.cert, tls.key) if tls.cert and tls.key else None
        return consul.aio.Consul(
            host=host, port=port, scheme="https", dc=dc, verify=tls.ca or True, cert=client_cert,
            connections_limit=limit,
        )

    def __repr__(self) -> str:
        return f"ConsulClient({self._agent_address!r})"

    async def close(self) -> None:
        """Close both HTTP connection pools."""
        try:
            await self._consul.close()
        finally:
            await self._blocking.close()

    @contextlib.asynccontextmanager
    async def _translated(self, what: str, timeout: float, *, first_contact: bool = False) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(timeout):
                yield
        except TimeoutError:
            raise BackendUnavailableError(
                f"Consul agent {self._agent_address} did not answer {what} within {timeout:g} s"
            ) from None
        except (aiohttp.ClientError, OSError) as error:
            if _is_tls_failure(error) or (first_contact and self._uses_tls and _is_hang_up(error)):
                # A TLS 1.3 server checks our certificate after the handshake and may just reset the
                # connection (no alert): on the very first request over TLS that means it refused us.
                raise DiscoveryTLSError(
                    f"TLS with the Consul agent {self._agent_address} failed for {what} (untrusted server certificate,"
                    f" refused client certificate, or not an HTTPS port): {_tls_reason(error)}"
                ) from None
            hint = ""
            if _is_hang_up(error) and self._parked >= _MANY_PARKED:
                hint = (f" ({self._parked} blocking queries of this process are open to the agent; its "
                        "limits.http_max_conns_per_client, default 200, may be hanging up on more: raise it)")
            raise BackendUnavailableError(
                f"Consul agent {self._agent_address} unreachable for {what}: {type(error).__name__}: {error}{hint}"
            ) from None
        except ACLPermissionDenied as error:
            if "ACL not found" in str(error):  # Consul's answer to a token it does not know
                raise AuthenticationError(f"Consul does not know the ACL token used for {what}") from None
            raise PermissionDeniedError(f"Consul refused {what}: {error}") from None
        except ACLDisabled as error:
            raise AuthenticationError(f"Consul rejected the token for {what}: {error}") from None
        except NotFound as error:
            raise UnknownToAgentError(f"Consul agent does not know it ({what}): {error}") from None
        except BadRequest as error:
            raise ValidationError("instance", f"Consul rejected {what}: {error}") from None
        except ConsulException as error:
            text = str(error)
            if any(marker in text for marker in _UNKNOWN_CHECK_MARKERS):
                raise UnknownToAgentError(f"Consul agent does not know it ({what}): {text}") from None
            if text[:1] == "5":
                raise BackendUnavailableError(f"Consul agent {self._agent_address} failed {what}: {text}") from None
            raise DiscoveryError(f"Consul failed {what}: {text}") from None

    async def _call(
        self, what: str, call: Awaitable[T], timeout: float | None = None, *, first_contact: bool = False
    ) -> T:
        async with self._translated(what, self._timeout if timeout is None else timeout, first_contact=first_contact):
            return await call
        raise AssertionError("unreachable")  # pragma: no cover  # mypy cannot see that the context re-raises

    async def _call_blocking(self, what: str, call: Awaitable[T], timeout: float) -> T:
        """``_call`` for a blocking query (made on ``self._blocking``), counted while it is parked."""
        self._parked += 1
        try:
            return await self._call(what, call, timeout)
        finally:
            self._parked -= 1

    async def agent_self(self) -> dict[str, Any]:
        """The agent's configuration (used to prove it is reachable)."""
        # py-consul's agent.self() sends no token, which an ACL default-deny agent refuses; same call with it.
        call = self._consul.http.get(CB.json(), "/v1/agent/self", headers=self._consul.prepare_headers())
        return cast(dict[str, Any], await self._call("GET /v1/agent/self", call, first_contact=True))

    async def agent_service_ids(self) -> set[str]:
        """The ids of the services the agent holds (that our token may read)."""
        call = self._consul.http.get(CB.json(), "/v1/agent/services", headers=self._consul.prepare_headers())
        return set(cast(dict[str, Any], await self._call("GET /v1/agent/services", call)))

    async def agent_service(self, service_id: str) -> dict[str, Any] | None:
        """``GET /v1/agent/service/<id>``: the agent's record of one service (with ``Meta``), ``None`` if unknown."""
        path = f"/v1/agent/service/{service_id}"  # as py-consul builds deregister/<id>: ids hold no '/', '?', '#'
        call = self._consul.http.get(CB.json(), path, headers=self._consul.prepare_headers())
        try:
            return cast(dict[str, Any], await self._call(f"GET /v1/agent/service/{service_id}", call))
        except UnknownToAgentError:
            return None

    async def register_service(
        self,
        *,
        name: str,
        service_id: str,
        address: str,
        port: int,
        tags: list[str],
        meta: dict[str, str],
        weight: int,
        checks: list[dict[str, Any]],
        replace_existing_checks: bool,
    ) -> None:
        """``PUT /v1/agent/service/register`` with our checks."""
        await self._call(
            f"registration of {service_id!r}",
            self._consul.agent.service.register(
                name,
                service_id=service_id,
                address=address,
                port=port,
                tags=tags,
                meta=meta,
                weights={"Passing": weight, "Warning": 1},
                check=checks[0],
                extra_checks=checks[1:],
                replace_existing_checks=replace_existing_checks,
            ),
        )

    async def deregister_service(self, service_id: str) -> None:
        """``PUT /v1/agent/service/deregister/<id>`` (a missing service is not an error)."""
        await self._call(f"deregistration of {service_id!r}", self._consul.agent.service.deregister(service_id))

    async def update_ttl_check(self, check_id: str, passing: bool, note: str | None = None) -> None:
        """Pass or fail a TTL check; :class:`UnknownToAgentError` if the agent does not know it."""
        checks = self._consul.agent.check
        call = checks.ttl_pass(check_id, notes=note) if passing else checks.ttl_fail(check_id, notes=note)
        known = await self._call(f"TTL update of {check_id!r}", call)
        if known is False:  # py-consul turns a 404 into False
            raise UnknownToAgentError(f"Consul agent does not know the check {check_id!r}")

    async def set_maintenance(self, service_id: str, enable: bool, reason: str | None = None) -> None:
        """Turn maintenance mode of a service on or off; :class:`UnknownToAgentError` if it is unknown."""
        known = await self._call(
            f"maintenance of {service_id!r}",
            self._consul.agent.service.maintenance(service_id, "true" if enable else "false", reason=reason),
        )
        if known is False:
            raise UnknownToAgentError(f"Consul agent does not know the service {service_id!r}")

    async def health_service(
        self, service: str, tag: str, index: int = 0, wait: float = 0.0
    ) -> tuple[int, list[dict[str, Any]]]:
        """``GET /v1/health/service/<service>?tag=<tag>`` (every status); blocking when ``index`` > 0."""
        blocking = index > 0
        # Consul adds up to wait/16 of jitter to a blocking wait; leave room for it and for the answer.
        timeout = self._timeout + (wait * 17 / 16 if blocking else 0.0)
        what = f"GET /v1/health/service/{service}"
        if blocking:
            raw_index, entries = await self._call_blocking(
                what, self._blocking.health.service(service, tag=tag, index=index, wait=f"{wait:g}s"), timeout
            )
        else:
            raw_index, entries = await self._call(what, self._consul.health.service(service, tag=tag), timeout)
        return int(raw_index), list(entries or ())

    async def catalog_services(self) -> dict[str, list[str]]:
        """``GET /v1/catalog/services``: every service name with the union of its tags."""
        _, services = await self._call("GET /v1/catalog/services", self._consul.catalog.services())
        return {str(name): list(tags or ()) for name, tags in (services or {}).items()}


def _is_tls_failure(error: BaseException) -> bool:
    """Whether an aiohttp/OS error comes from a TLS handshake (anywhere in its cause chain)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError | aiohttp.ClientSSLError):
            return True
        if isinstance(seen, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError) and "SSL" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_hang_up(error: BaseException) -> bool:
    """A connection reset or a server that closed without answering."""
    if isinstance(error, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return True
    return isinstance(error, aiohttp.ClientOSError) and error.errno == errno.ECONNRESET


def _tls_reason(error: BaseException) -> str:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError | aiohttp.ClientConnectorCertificateError):
            detail = getattr(seen, "verify_message", None) or getattr(seen, "certificate_error", seen)
            return f"server certificate not trusted ({detail})"
        if isinstance(seen, ssl.SSLError):
            reason = seen.reason or str(seen)
            hint = " (client certificate refused or missing)" if "CERTIFICATE" in reason.upper() else ""
            return f"{reason}{hint}"
        seen = seen.__cause__ or seen.__context__
    if _is_hang_up(error):
        return f"the agent hung up right after the handshake (client certificate refused or missing): {error}"
    return f"{type(error).__name__}: {error}"
