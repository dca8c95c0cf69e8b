"""The state of a backend's connection, as Curator's ``ConnectionStateListener`` and kazoo's listener report it.

States: ``connected`` (the first contact), ``suspended`` (a request or stream failed for lack of a server: what we
registered may still be alive), ``lost`` (the session is gone, or the server has been unreachable for longer than
registrations survive without us), ``reconnected`` (contact again after ``suspended`` or ``lost``).

Every backend owns one :class:`ConnectionMonitor` (``backend.connection``). Adapters feed it where they already
see the connection: kazoo's state listener (ZooKeeper), the endpoint pool's failed and successful calls (etcd),
every HTTP call to the agent (Consul). A monitor that has been ``suspended`` for ``lost_after`` seconds declares
the connection ``lost`` by itself. Transitions are logged at INFO (``lost`` at WARNING) on
``discovery.connection`` and passed to listeners, on the registry's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ConnectionListener", "ConnectionMonitor", "ConnectionState", "ConnectionStatus"]

log = logging.getLogger("discovery.connection")


class ConnectionState(enum.StrEnum):
    """Where a backend's connection stands."""

    CONNECTED = "connected"
    SUSPENDED = "suspended"
    LOST = "lost"
    RECONNECTED = "reconnected"

    @property
    def usable(self) -> bool:
        """Whether requests are expected to reach the server now."""
        return self in (ConnectionState.CONNECTED, ConnectionState.RECONNECTED)


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """One state of a backend's connection: which backend, what state, since when (``time.time()``), and why.

    Immutable: safe to share between threads.
    """

    backend: str
    state: ConnectionState
    since: float
    detail: str = ""
    previous: ConnectionState | None = None


ConnectionListener = Callable[[ConnectionStatus], None]


class ConnectionMonitor:
    """The connection state of one backend and the listeners that want to hear about it.

    Not thread-safe: feed it and add listeners on the backend's event loop only (the adapters do); reading
    :attr:`status` from another thread is safe (one attribute holding an immutable value).
    """

    def __init__(self, backend: str, *, lost_after: float | None = None) -> None:
        self.backend = backend
        #: Seconds of ``suspended`` after which the connection counts as ``lost`` (``None``: only when told).
        self.lost_after = lost_after
        self._status: ConnectionStatus | None = None
        self._listeners: list[ConnectionListener] = []
        self._lost_timer: asyncio.TimerHandle | None = None

    @property
    def status(self) -> ConnectionStatus | None:
        """The current status (``None`` before the first contact)."""
        return self._status

    @property
    def state(self) -> ConnectionState | None:
        """The current state (``None`` before the first contact)."""
        status = self._status
        return None if status is None else status.state

    def add_listener(self, listener: ConnectionListener) -> Callable[[], None]:
        """Call ``listener(status)`` on every transition (on the event loop; it must not block). Returns a remover."""
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    # -- fed by the adapters -------------------------------------------------------------------------------------

    def connected(self, detail: str = "") -> None:
        """The first contact succeeded (a later call counts as contact again: ``reconnected`` if it was down)."""
        if self._status is None:
            self._set(ConnectionState.CONNECTED, detail)
        else:
            self.contact(detail)

    @property
    def usable(self) -> bool:
        """Whether the connection is connected or reconnected (a request reaching the server changes nothing)."""
        state = self.state
        return state is not None and state.usable

    def contact(self, detail: str = "") -> None:
        """A request reached the server: ``reconnected`` if the connection was ``suspended`` or ``lost``."""
        state = self.state
        if state is ConnectionState.SUSPENDED or state is ConnectionState.LOST:
            self._set(ConnectionState.RECONNECTED, detail)

    def failure(self, detail: str) -> None:
        """A request or stream failed for lack of a server: ``suspended`` if the connection was usable."""
        state = self.state
        if state is not None and state.usable:
            self._set(ConnectionState.SUSPENDED, detail)
            self._arm_lost_timer()

    def lost(self, detail: str) -> None:
        """The session (or what keeps our registrations alive) is gone."""
        if self.state is not ConnectionState.LOST:
            self._set(ConnectionState.LOST, detail)

    def reset(self) -> None:
        """Forget the state (the backend was closed); listeners stay."""
        self._cancel_lost_timer()
        self._status = None

    # -- internals -----------------------------------------------------------------------------------------------

    def _set(self, state: ConnectionState, detail: str) -> None:
        previous = self.state
        if state is not ConnectionState.SUSPENDED:
            self._cancel_lost_timer()
        status = ConnectionStatus(self.backend, state, time.time(), detail, previous)
        self._status = status
        level = logging.WARNING if state is ConnectionState.LOST else logging.INFO
        log.log(level, "%s connection %s%s", self.backend, state.value, f": {detail}" if detail else "")
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:
                log.exception("connection listener %r failed", listener)

    def _arm_lost_timer(self) -> None:
        if self.lost_after is None or self._lost_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._lost_timer = loop.call_later(self.lost_after, self._declare_lost)

    def _cancel_lost_timer(self) -> None:
        if self._lost_timer is not None:
            self._lost_timer.cancel()
            self._lost_timer = None

    def _declare_lost(self) -> None:
        self._lost_timer = None
        if self.state is ConnectionState.SUSPENDED:
            self.lost(f"no server answered for {self.lost_after:g} s")
