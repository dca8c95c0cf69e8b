"""A small listener protocol for metrics: the library calls it, adapters turn it into Prometheus or OpenTelemetry.

Subclass :class:`MetricsListener`, override the events you want, and add it with :func:`add_metrics_listener`.
Listeners are process-wide, like Prometheus' default registry and OpenTelemetry's global meter provider: every
registry and every client cache in the process reports to them, so a cache built by hand reports too. With no
listener added, each event costs the hot path one attribute read.

Events, and where they come from:

=========================  ==========================================================================================
``on_pick``                a :class:`~discovery.ServiceCache` picked an instance (any thread; keep it cheap)
``on_pick_failed``         a pick found nothing to pick (``reason``: ``no-instance`` or ``closed``)
``on_set_aside``           the number of a service's candidates set aside by failure feedback changed
``on_snapshot``            a watched service's snapshot was published to its subscribers (``stale`` while the
                           backend is unreachable); ``lag`` is the seconds from the backend's watch yielding it to
                           the last subscriber having it (a slow subscriber shows here)
``on_registration_state``  a registration changed state (``previous`` is ``None`` for the first one)
``on_connection_state``    a backend's connection changed state (connected / suspended / lost / reconnected)
``on_connection_closed``   a registry closed; ``status`` is its connection's last state
=========================  ==========================================================================================

Every event but ``on_pick``/``on_pick_failed``/``on_set_aside`` runs on a registry's event loop; those three run in
the thread that picks or reports failures. A listener that raises is logged and skipped, never fatal.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from discovery.core.backend import RegistrationState
from discovery.core.connection import ConnectionStatus
from discovery.core.models import Instance, Snapshot

__all__ = ["METRICS", "MetricsHub", "MetricsListener", "add_metrics_listener", "remove_metrics_listener"]

log = logging.getLogger("discovery.observability.metrics")


class MetricsListener:
    """Receives the library's metric events; every method is a no-op here, override the ones you need.

    Implementations must be thread-safe: methods are called from the registry's loop thread and from the threads
    that pick, possibly at once (the Prometheus and OpenTelemetry instruments are safe for that).
    """

    def on_pick(self, instance: Instance) -> None:
        """A cache picked ``instance``."""

    def on_pick_failed(self, namespace: str, service: str, reason: str) -> None:
        """A pick of ``namespace/service`` found nothing (``reason``: ``no-instance`` or ``closed``)."""

    def on_set_aside(self, namespace: str, service: str, count: int) -> None:
        """``count`` candidates of ``namespace/service`` are now set aside by failure feedback (in one cache)."""

    def on_snapshot(self, snapshot: Snapshot, lag: float) -> None:
        """A snapshot of a watched service was delivered to its subscribers, ``lag`` seconds after it arrived."""

    def on_registration_state(
        self, instance: Instance, previous: RegistrationState | None, state: RegistrationState
    ) -> None:
        """A registration of ``instance`` went from ``previous`` to ``state``."""

    def on_connection_state(self, status: ConnectionStatus) -> None:
        """A backend's connection changed state."""

    def on_connection_closed(self, status: ConnectionStatus) -> None:
        """A registry closed its backend; ``status`` is the connection's last state."""


class MetricsHub:
    """The process-wide fan-out to the added listeners (use :data:`METRICS`).

    Thread-safe: the listener tuple is replaced, never changed in place, so a dispatch in flight sees a
    consistent set.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: tuple[MetricsListener, ...] = ()
        #: Whether any listener is added: emitters check this one attribute before doing any work.
        self.active = False

    def add(self, listener: MetricsListener) -> Callable[[], None]:
        """Add a listener; returns a function that removes it."""
        if not isinstance(listener, MetricsListener):
            raise TypeError(f"expected a discovery.observability.MetricsListener, got {type(listener).__name__}")
        with self._lock:
            self._listeners = (*self._listeners, listener)
            self.active = True
        return lambda: self.remove(listener)

    def remove(self, listener: MetricsListener) -> None:
        """Remove a listener (no-op if absent)."""
        with self._lock:
            self._listeners = tuple(known for known in self._listeners if known is not listener)
            self.active = bool(self._listeners)

    def _each(self, event: str, call: Callable[[MetricsListener], None]) -> None:
        for listener in self._listeners:
            try:
                call(listener)
            except Exception:
                log.exception("metrics listener %r failed on %s", listener, event)

    def pick(self, instance: Instance) -> None:
        """Dispatch :meth:`MetricsListener.on_pick`."""
        self._each("pick", lambda listener: listener.on_pick(instance))

    def pick_failed(self, namespace: str, service: str, reason: str) -> None:
        """Dispatch :meth:`MetricsListener.on_pick_failed`."""
        self._each("pick_failed", lambda listener: listener.on_pick_failed(namespace, service, reason))

    def set_aside(self, namespace: str, service: str, count: int) -> None:
        """Dispatch :meth:`MetricsListener.on_set_aside`."""
        self._each("set_aside", lambda listener: listener.on_set_aside(namespace, service, count))

    def snapshot(self, snapshot: Snapshot, lag: float) -> None:
        """Dispatch :meth:`MetricsListener.on_snapshot`."""
        self._each("snapshot", lambda listener: listener.on_snapshot(snapshot, lag))

    def registration_state(
        self, instance: Instance, previous: RegistrationState | None, state: RegistrationState
    ) -> None:
        """Dispatch :meth:`MetricsListener.on_registration_state`."""
        self._each("registration_state", lambda listener: listener.on_registration_state(instance, previous, state))

    def connection_state(self, status: ConnectionStatus) -> None:
        """Dispatch :meth:`MetricsListener.on_connection_state`."""
        self._each("connection_state", lambda listener: listener.on_connection_state(status))

    def connection_closed(self, status: ConnectionStatus) -> None:
        """Dispatch :meth:`MetricsListener.on_connection_closed`."""
        self._each("connection_closed", lambda listener: listener.on_connection_closed(status))


#: The process-wide hub every registry and cache reports to.
METRICS = MetricsHub()


def add_metrics_listener(listener: MetricsListener) -> Callable[[], None]:
    """Add a process-wide metrics listener; returns a function that removes it."""
    return METRICS.add(listener)


def remove_metrics_listener(listener: MetricsListener) -> None:
    """Remove a process-wide metrics listener (no-op if absent)."""
    METRICS.remove(listener)
