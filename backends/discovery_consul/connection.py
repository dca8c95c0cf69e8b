"""The few Consul HTTP calls the backend makes, on py-consul's ``consul.aio``, with errors translated.

Every call has a deadline (``asyncio.timeout``) and raises only discovery errors: transport failures and
Consul 5xx answers become :class:`BackendUnavailableError` (retryable), ACL refusals become
:class:`PermissionDeniedError` / :class:`AuthenticationError`, and "this check is unknown to the agent"
becomes :class:`UnknownToAgentError`, the signal to register again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar, cast

import aiohttp
import consul.aio
from consul.callback import CB
from consul.exceptions import ACLDisabled, ACLPermissionDenied, BadRequest, ConsulException, NotFound

from discovery.core.connection import ConnectionMonitor
from discovery.core.errors import BackendUnavailableError, DiscoveryError, DiscoveryTLSError, ValidationError
from discovery_consul.security import ConsulSecurity, acl_error, is_hang_up, is_tls_failure, tls_reason

T = TypeVar("T")

# Consul 1.8 answers 500 "CheckID ... does not have associated TTL" for a TTL update of a check it does not
# know; newer versions answer 404 "Unknown check ID". Both mean: the agent forgot us.
_UNKNOWN_CHECK_MARKERS = ("does not have associated TTL", "Unknown check", "Unknown service")

#: Connections the blocking-query pool may open: the change feed of every watched service, the hot services'
#: own queries and the definitions watches (docs/decisions/consul-watches.md); a further one waits for a free one.
BLOCKING_CONNECTIONS = 5


class UnknownToAgentError(DiscoveryError):
    """The agent does not know the service or check (e.g. it restarted and lost its state)."""


class ConsulClient:
    """An async Consul client for one agent. Create it inside the running event loop."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: ConsulSecurity,
        dc: str | None,
        timeout: float,
        monitor: ConnectionMonitor | None = None,
    ) -> None:
        self._agent_address = f"{host}:{port}"
        # Told about every call that reached the agent or could not: the backend's connection state comes from here.
        self._monitor = monitor if monitor is not None else ConnectionMonitor("consul")
        self._timeout = timeout
        self._uses_tls = security.tls is not None
        # Two pools: a blocking query parks its HTTP connection for up to ``wait`` seconds, so sharing one pool
        # would let heartbeats, registrations and reads queue behind parked queries
        # (docs/decisions/consul-connection-pools.md).
        self._consul = consul.aio.Consul(host=host, port=port, dc=dc, **security.client_arguments())
        self._blocking = consul.aio.Consul(
            host=host, port=port, dc=dc, connections_limit=BLOCKING_CONNECTIONS, **security.client_arguments()
        )
        security.apply_token(self._consul)
        security.apply_token(self._blocking)

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
            self._monitor.contact(f"Consul agent {self._agent_address} answered")
        except TimeoutError:
            self._monitor.failure(f"Consul agent {self._agent_address} did not answer {what} within {timeout:g} s")
            raise BackendUnavailableError(
                f"Consul agent {self._agent_address} did not answer {what} within {timeout:g} s"
            ) from None
        except (aiohttp.ClientError, OSError) as error:
            if is_tls_failure(error) or (first_contact and self._uses_tls and is_hang_up(error)):
                # A TLS 1.3 server checks our certificate after the handshake and may just reset the
                # connection (no alert): on the very first request over TLS that means it refused us.
                raise DiscoveryTLSError(
                    f"TLS with the Consul agent {self._agent_address} failed for {what} (untrusted server certificate,"
                    f" refused client certificate, or not an HTTPS port): {tls_reason(error)}"
                ) from None
            self._monitor.failure(f"Consul agent {self._agent_address} unreachable: {type(error).__name__}")
            raise BackendUnavailableError(
                f"Consul agent {self._agent_address} unreachable for {what}: {type(error).__name__}: {error}"
            ) from None
        except (ACLPermissionDenied, ACLDisabled) as error:
            raise acl_error(error, what) from None
        except NotFound as error:
            raise UnknownToAgentError(f"Consul agent does not know it ({what}): {error}") from None
        except BadRequest as error:
            raise ValidationError("instance", f"Consul rejected {what}: {error}") from None
        except ConsulException as error:
            text = str(error)
            if any(marker in text for marker in _UNKNOWN_CHECK_MARKERS):
                raise UnknownToAgentError(f"Consul agent does not know it ({what}): {text}") from None
            if text[:1] == "5":
                self._monitor.failure(f"Consul agent {self._agent_address} answered {text[:3]}")
                raise BackendUnavailableError(f"Consul agent {self._agent_address} failed {what}: {text}") from None
            raise DiscoveryError(f"Consul failed {what}: {text}") from None

    async def _call(
        self, what: str, call: Awaitable[T], timeout: float | None = None, *, first_contact: bool = False
    ) -> T:
        async with self._translated(what, self._timeout if timeout is None else timeout, first_contact=first_contact):
            return await call
        raise AssertionError("unreachable")  # pragma: no cover  # mypy cannot see that the context re-raises

    async def _call_blocking(self, what: str, call: Awaitable[T], timeout: float) -> T:
        """``_call`` for a blocking query (made on ``self._blocking``)."""
        return await self._call(what, call, timeout)

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

    async def register_check(self, service_id: str, check: dict[str, Any]) -> None:
        """``PUT /v1/agent/check/register``: add a check to a service this agent holds (:class:`UnknownToAgentError`
        if it holds no such service)."""
        definition = {key: value for key, value in check.items() if key not in ("CheckID", "Name")}
        call = self._consul.agent.check.register(
            str(check["Name"]), check=definition, check_id=str(check["CheckID"]), service_id=service_id
        )
        try:
            await self._call(f"registration of the check {check['CheckID']!r}", call)
        except DiscoveryError as error:
            if "does not exist" in str(error):  # Consul: 'ServiceID "…" does not exist'
                raise UnknownToAgentError(f"Consul agent does not know the service {service_id!r}") from None
            raise

    async def set_maintenance(self, service_id: str, enable: bool, reason: str | None = None) -> None:
        """Turn maintenance mode of a service on or off; :class:`UnknownToAgentError` if it is unknown."""
        known = await self._call(
            f"maintenance of {service_id!r}",
            self._consul.agent.service.maintenance(service_id, "true" if enable else "false", reason=reason),
        )
        if known is False:
            raise UnknownToAgentError(f"Consul agent does not know the service {service_id!r}")

    async def health_service(
        self,
        service: str,
        tag: str | None,
        index: int = 0,
        wait: float = 0.0,
        filter_expr: str | None = None,
        *,
        parked: bool = True,
    ) -> tuple[int, list[dict[str, Any]]]:
        """``GET /v1/health/service/<service>[?tag=<tag>][&filter=…]`` (every status); blocking when ``index`` > 0.

        ``filter_expr`` is a Consul filter expression (Consul 1.5+): the agent answers only the matching entries.
        A blocking query goes on the pool for parked queries unless ``parked`` is false: a short wait (a write
        waiting to read itself back, bounded by the URL's timeout) shares the ordinary pool, so that it never
        queues behind the watches' long ones.
        """
        blocking = index > 0
        # Consul adds up to wait/16 of jitter to a blocking wait; leave room for it and for the answer.
        timeout = self._timeout + (wait * 17 / 16 if blocking else 0.0)
        what = f"GET /v1/health/service/{service}"
        if blocking:
            client = self._blocking if parked else self._consul
            call = client.health.service(service, tag=tag, index=index, wait=f"{wait:g}s", filter_expr=filter_expr)
            raw_index, entries = await (self._call_blocking(what, call, timeout) if parked
                                        else self._call(what, call, timeout))
        else:
            call = self._consul.health.service(service, tag=tag, filter_expr=filter_expr)
            raw_index, entries = await self._call(what, call, timeout)
        return int(raw_index), list(entries or ())

    async def health_state(
        self, index: int = 0, wait: float = 0.0, filter_expr: str | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        """``GET /v1/health/state/any``: every check of the datacenter (``Node``, ``CheckID``, ``ServiceName``,
        ``ModifyIndex``...) that ``filter_expr`` (Consul's filter language) selects; blocking when ``index`` > 0.
        """
        blocking = index > 0
        timeout = self._timeout + (wait * 17 / 16 if blocking else 0.0)  # room for Consul's wait jitter
        what = "GET /v1/health/state/any"
        # Always on the blocking pool: the feed's re-lists reuse its one connection.
        call = (self._blocking.health.state("any", index=index, wait=f"{wait:g}s", filter_expr=filter_expr)
                if blocking else self._blocking.health.state("any", filter_expr=filter_expr))
        raw_index, checks = await self._call_blocking(what, call, timeout)
        return int(raw_index), list(checks or ())

    async def kv_put(self, key: str, value: bytes) -> None:
        """``PUT /v1/kv/<key>``."""
        written = await self._call(f"PUT /v1/kv/{key}", self._consul.kv.put(key, value))
        if written is not True:
            raise BackendUnavailableError(f"Consul did not store {key}")

    async def kv_get(self, key: str) -> bytes | None:
        """``GET /v1/kv/<key>``: the value, or ``None`` when the key does not exist."""
        _, entry = await self._call(f"GET /v1/kv/{key}", self._consul.kv.get(key))
        return None if entry is None else bytes(entry.get("Value") or b"")

    async def kv_delete(self, key: str) -> None:
        """``DELETE /v1/kv/<key>`` (a missing key is not an error)."""
        await self._call(f"DELETE /v1/kv/{key}", self._consul.kv.delete(key))

    async def kv_list(self, prefix: str, index: int = 0, wait: float = 0.0) -> tuple[int, list[tuple[str, bytes]]]:
        """``GET /v1/kv/<prefix>?recurse``: the index and every ``(key, value)``; blocking when ``index`` > 0."""
        blocking = index > 0
        timeout = self._timeout + (wait * 17 / 16 if blocking else 0.0)  # room for Consul's wait jitter
        what = f"GET /v1/kv/{prefix}?recurse"
        if blocking:
            raw_index, entries = await self._call_blocking(
                what, self._blocking.kv.get(prefix, recurse=True, index=index, wait=f"{wait:g}s"), timeout
            )
        else:
            raw_index, entries = await self._call(what, self._consul.kv.get(prefix, recurse=True), timeout)
        return int(raw_index), [(str(e.get("Key", "")), bytes(e.get("Value") or b"")) for e in entries or ()]

    async def catalog_services(self) -> dict[str, list[str]]:
        """``GET /v1/catalog/services``: every service name with the union of its tags."""
        _, services = await self._call("GET /v1/catalog/services", self._consul.catalog.services())
        return {str(name): list(tags or ()) for name, tags in (services or {}).items()}

