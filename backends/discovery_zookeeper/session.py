"""One kazoo client and its session, seen from the event loop.

State changes reach the loop as :class:`SessionEvent` values (``SUSPENDED``, ``EXPIRED``, ``CONNECTED`` with a
flag telling whether the session is new). The kazoo listener only forwards; it never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.retry import KazooRetry

from discovery.errors import BackendUnavailableError
from discovery_zookeeper.bridge import await_kazoo, call_in_loop
from discovery_zookeeper.config import ZooKeeperConfig

logger = logging.getLogger(__name__)


class SessionEvent(enum.Enum):
    """What the rest of the backend needs to know about the connection."""

    SUSPENDED = "suspended"
    EXPIRED = "expired"
    RECONNECTED = "reconnected"
    NEW_SESSION = "new-session"


SessionListener = Callable[[SessionEvent], None]


class ZooKeeperSession:
    """Owns the ``KazooClient``; offers awaitable requests with timeouts and loop-side state events."""

    def __init__(self, config: ZooKeeperConfig) -> None:
        self._config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[SessionListener] = []
        self._session_id: int | None = None
        self.connected = asyncio.Event()
        # kazoo's own reconnect loop: quick first retries, capped well below any session timeout so a restarted
        # server is found again before the session expires; kazoo adds random jitter to every delay.
        retry = KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_jitter=0.3, max_delay=1.0)
        self.client = KazooClient(
            hosts=config.hosts,
            timeout=config.session_timeout,
            connection_retry=retry,
            command_retry=None,
        )

    @property
    def session_id(self) -> int | None:
        """The id of the live session (``None`` while disconnected)."""
        client_id = self.client.client_id
        return None if client_id is None else int(client_id[0])

    @property
    def negotiated_timeout(self) -> float:
        """The session timeout the server granted (it clamps to ``[2, 20]`` ticks by default)."""
        granted = getattr(self.client, "_session_timeout", None)
        return float(granted) / 1000.0 if granted else self._config.session_timeout

    def add_listener(self, listener: SessionListener) -> None:
        """Call ``listener`` on the event loop for every session event."""
        self._listeners.append(listener)

    def remove_listener(self, listener: SessionListener) -> None:
        """Stop calling ``listener``."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def start(self) -> None:
        """Connect, or raise ``BackendUnavailableError`` after ``connect_timeout``."""
        self._loop = asyncio.get_running_loop()
        self.client.add_listener(self._on_kazoo_state)
        started = self.client.start_async()
        ready = await self._loop.run_in_executor(None, started.wait, self._config.connect_timeout)
        if not ready or not self.client.connected:
            await self._loop.run_in_executor(None, self._stop_quietly)
            raise BackendUnavailableError(
                f"could not connect to ZooKeeper at {self._config.hosts} within {self._config.connect_timeout:g}s"
            )
        self._session_id = self.session_id
        self.connected.set()

    async def stop(self) -> None:
        """Close the session (ephemeral nodes are deleted by the server at once) and free kazoo's threads."""
        self.client.remove_listener(self._on_kazoo_state)
        self.connected.clear()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._stop_quietly)

    async def drop(self) -> None:
        """Disconnect *without* closing the session, as a crashed process would.

        kazoo has no public call for this: ``stop()`` always sends CloseSession. We mark the client stopped (so
        its connection loop does not reconnect), then shut the TCP socket down under it; the loop sees the
        connection drop and exits without ever queueing CloseSession. The server keeps the session until it
        times out, so its ephemeral nodes vanish only by expiry. See docs/decisions/zookeeper-abort.md.
        """
        self.client.remove_listener(self._on_kazoo_state)
        self.connected.clear()
        connection = self.client._connection
        self.client._stopped.set()
        sock: socket.socket | None = getattr(connection, "_socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._release_after_drop)

    def _release_after_drop(self) -> None:
        connection = self.client._connection
        connection.connection_stopped.wait(self._config.session_timeout)
        with contextlib.suppress(Exception):
            self.client.handler.stop()
        with contextlib.suppress(Exception):
            self.client.close()

    def _stop_quietly(self) -> None:
        try:
            self.client.stop()
        except Exception as error:  # kazoo raises assorted errors when stopping a half-open client
            logger.debug("stopping kazoo: %s", error)
        with contextlib.suppress(Exception):
            self.client.close()

    # -- kazoo thread → loop -------------------------------------------------------------------------------------

    def _on_kazoo_state(self, state: str) -> None:
        if self._loop is not None:
            call_in_loop(self._loop, self._on_state, state)

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            # Read now, on the loop: the id kazoo reports after this event tells old session from new.
            current = self.session_id
            if current is None:
                return  # already gone again; the next event will tell
            self.connected.set()
            event = SessionEvent.RECONNECTED if current == self._session_id else SessionEvent.NEW_SESSION
            self._session_id = current
        elif state == KazooState.SUSPENDED:
            self.connected.clear()
            event = SessionEvent.SUSPENDED
        else:
            self.connected.clear()
            event = SessionEvent.EXPIRED
        logger.debug("ZooKeeper session event %s (session %s)", event.value, self._session_id)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("session listener failed")

    # -- requests ------------------------------------------------------------------------------------------------

    async def request(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a kazoo ``*_async`` call and await it with the request timeout."""
        try:
            async_result = call(*args, **kwargs)
        except Exception as error:
            # kazoo raises synchronously e.g. when the client is already stopped.
            raise BackendUnavailableError(f"ZooKeeper {what} failed: {type(error).__name__}: {error}") from error
        return await await_kazoo(async_result, self._config.request_timeout, what)
