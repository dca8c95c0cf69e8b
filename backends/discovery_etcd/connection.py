"""One aetcd client at a time over a list of failover endpoints, with deadline-bounded, jittered retries.

aetcd's ``Client`` speaks to a single ``host:port``; the failover across the URL's endpoints is ours: a
connection-level failure moves the pool to the next endpoint (round robin), and every operation is
retried (tenacity, jittered exponential backoff) until the configured timeout has passed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
from aetcd import rpc
from tenacity import AsyncRetrying, retry_if_exception, wait_random_exponential

from discovery.core.connection import ConnectionMonitor
from discovery.core.errors import (
    AuthenticationError,
    BackendUnavailableError,
    DiscoveryError,
    PermissionDeniedError,
)
from discovery_etcd.security import is_authentication_failure, is_tls_error, tls_error
from discovery_etcd.settings import EtcdSettings

log = logging.getLogger("discovery.backends.etcd.connection")

T = TypeVar("T")

# Short reconnect backoff so that a restarted server is used again within about a second (gRPC's default
# starts at 1 s and grows to 120 s); HTTP/2 pings notice a silently dead peer. etcd refuses pings more often
# than every 5 s and pings without an open stream, hence these values.
CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
}

# CANCELLED: the channel was closed under the call (failover to another endpoint); INTERNAL: gRPC core's
# "Internal error from Core" when a message is sent on a connection that just broke.
#: Seconds: the first retry waits up to this long, every further one up to twice as long as the one before.
FIRST_RETRY_WAIT = 0.05

_CONNECTION_CODES = frozenset(
    {rpc.StatusCode.UNAVAILABLE, rpc.StatusCode.DEADLINE_EXCEEDED, rpc.StatusCode.CANCELLED, rpc.StatusCode.INTERNAL}
)


class ChannelClosedError(ConnectionError):
    """A call ended because its client was closed under it: another call renewed the client (a stale auth token),
    an endpoint failover dropped it, or the pool closed. grpc.aio reports such a call as a cancellation of the task
    awaiting it; as a connection error it is retried with the pool's next client instead."""


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error`` means the server could not be reached (worth retrying, maybe elsewhere)."""
    if is_tls_error(error):
        return False  # wrong certificates do not get better by retrying
    if isinstance(error, aetcd.exceptions.ConnectionFailedError | aetcd.exceptions.ConnectionTimeoutError):
        return True
    if isinstance(error, TimeoutError | ConnectionError) and not isinstance(error, DiscoveryError):
        return True
    if isinstance(error, aetcd.exceptions.ClientError) and isinstance(error.__cause__, rpc.AioRpcError):
        error = error.__cause__
    if isinstance(error, rpc.AioRpcError):
        return error.code() in _CONNECTION_CODES
    return False


def is_stale_token(error: BaseException) -> bool:
    """Whether etcd refused the auth token the client logged in with (an etcd restart forgets its tokens).

    aetcd authenticates once per connection; a new client logs in again.
    """
    return "invalid auth token" in str(error) or "invalid auth token" in str(error.__cause__ or "")


def _worth_retrying(error: BaseException) -> bool:
    return is_connection_error(error) or is_stale_token(error)


def is_lease_not_found(error: BaseException) -> bool:
    """Whether etcd refused a write because its lease no longer exists."""
    return isinstance(error, aetcd.exceptions.ClientError) and "lease not found" in str(error)


def translate(error: BaseException, action: str) -> DiscoveryError:
    """A discovery error naming what failed, for an aetcd or gRPC exception."""
    detail = str(error) or type(error).__name__
    if is_tls_error(error):
        return tls_error(error, action, "the server")
    if isinstance(error, aetcd.exceptions.UnauthenticatedError) or is_authentication_failure(error):
        return AuthenticationError(f"etcd rejected the credentials while trying to {action}: {detail}")
    cause = error.__cause__
    if isinstance(cause, rpc.AioRpcError) and cause.code() == rpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(f"etcd denied permission to {action}: {detail}")
    return BackendUnavailableError(f"could not {action} on etcd: {detail}")


class EndpointPool:
    """Hands out the aetcd client of the current endpoint and rotates on connection failures."""

    def __init__(self, settings: EtcdSettings, monitor: ConnectionMonitor | None = None) -> None:
        self._settings = settings
        # Told about every failed and successful call: the backend's connection state comes from here.
        self._monitor = monitor if monitor is not None else ConnectionMonitor("etcd")
        self._index = 0
        self._client: Any = None
        self._closed = False

    @property
    def timeout(self) -> float:
        """Seconds an operation may take, retries included."""
        return self._settings.timeout

    def describe(self) -> str:
        """The endpoints, for error messages."""
        return ",".join(str(endpoint) for endpoint in self._settings.endpoints)

    async def client(self) -> Any:
        """The connected client of the current endpoint (creating it if needed)."""
        if self._closed:
            raise BackendUnavailableError("the etcd backend is closed")
        if self._client is None:
            endpoint = self._settings.endpoints[self._index]
            assert endpoint.port is not None  # EtcdSettings fills in the default port
            self._client = self._settings.security.client(
                endpoint.host, endpoint.port, timeout=self._settings.timeout, options=CHANNEL_OPTIONS
            )
        client = self._client
        await client.connect()
        return client

    async def report_failure(self, client: Any) -> None:
        """``client`` hit a connection failure: use the next endpoint if there is one."""
        if client is not self._client:
            return
        self._monitor.failure(f"etcd at {self._settings.endpoints[self._index]} unreachable")
        if len(self._settings.endpoints) < 2:
            return
        self._index = (self._index + 1) % len(self._settings.endpoints)
        self._client = None
        log.info("etcd endpoint failed; switching to %s", self._settings.endpoints[self._index])
        await self._close_client(client)

    async def renew(self, client: Any) -> None:
        """``client``'s auth token is no longer valid: drop it, so the next call logs in with a new client."""
        if client is not self._client:
            return
        self._client = None
        log.info("etcd no longer accepts our auth token (restarted?); logging in again")
        await self._close_client(client)

    async def call(self, action: str, operation: Callable[[Any], Awaitable[T]], *, timeout: float | None = None) -> T:
        """Run ``operation(client)``, retrying connection failures on any endpoint until the deadline.

        Raises a :class:`DiscoveryError` (``BackendUnavailableError`` when the deadline passes).
        """
        last_error: BaseException | None = None
        try:
            async with asyncio.timeout(self._settings.timeout if timeout is None else timeout):
                try:
                    return await self._attempt(operation)  # the common case, without building a retry loop
                except Exception as error:
                    last_error = error
                    if not _worth_retrying(error):
                        raise
                await asyncio.sleep(random.uniform(0, FIRST_RETRY_WAIT))  # spread, not secrecy
                retrying = AsyncRetrying(
                    retry=retry_if_exception(_worth_retrying),
                    wait=wait_random_exponential(multiplier=FIRST_RETRY_WAIT, max=1.0),
                    reraise=True,
                )
                async for attempt in retrying:
                    with attempt:
                        try:
                            return await self._attempt(operation)
                        except Exception as error:
                            last_error = error
                            raise
        except TimeoutError:
            raise BackendUnavailableError(
                f"could not {action}: etcd at {self.describe()} did not answer in time ({last_error or 'timeout'})"
            ) from last_error
        except DiscoveryError:
            raise
        except Exception as error:
            if is_connection_error(error):
                raise BackendUnavailableError(
                    f"could not {action}: etcd at {self.describe()} is unreachable ({error})"
                ) from error
            raise translate(error, action) from error
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    async def _attempt(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        client = await self.client()
        try:
            try:
                result = await operation(client)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the caller is being cancelled
                raise ChannelClosedError("the etcd client was closed during the call") from None
        except Exception as error:
            if is_connection_error(error):
                await self.report_failure(client)
            elif is_stale_token(error):
                await self.renew(client)
            raise
        if not self._monitor.usable:  # only a recovery is news: the common path formats nothing
            self._monitor.contact(f"etcd at {self._settings.endpoints[self._index]} answered")
        return result

    async def close(self) -> None:
        """Drop the connection; later calls fail with ``BackendUnavailableError``."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await self._close_client(client)

    @staticmethod
    async def _close_client(client: Any) -> None:
        try:
            await client.close()
        except Exception:  # a channel that is already broken may fail to close cleanly; it is gone either way
            log.debug("closing an etcd client failed", exc_info=True)
