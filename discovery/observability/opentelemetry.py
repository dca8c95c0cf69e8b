"""OpenTelemetry metrics (``pip install 'service-discovery[opentelemetry]'``; the API only: bring your own SDK and
exporter)::

    from discovery.observability import add_metrics_listener
    from discovery.observability.opentelemetry import OpenTelemetryMetrics

    add_metrics_listener(OpenTelemetryMetrics())         # the global MeterProvider, or meter_provider=...

Instrument                                  Kind              Attributes
==========================================  ================  ===================================
``discovery.picks``                         counter           namespace, service
``discovery.pick_failures``                 counter           namespace, service, reason
``discovery.set_aside_instances``           up-down counter   namespace, service
``discovery.stale_snapshots``               counter           namespace, service
``discovery.watch.stale``                   up-down counter   namespace, service (1 while stale)
``discovery.watch.lag``                     histogram (s)     namespace, service
``discovery.registrations``                 up-down counter   state (live registrations per state)
``discovery.registration.transitions``      counter           state
``discovery.connections``                   up-down counter   backend, state (open connections per state)
``discovery.connection.transitions``        counter           backend, state

``discovery.picks`` is an observable counter: picks are counted in memory (a pick is the hot path, and an SDK
counter's ``add`` costs microseconds) and reported when a reader collects.

The same events and meaning as the Prometheus adapter (:mod:`discovery.observability.prometheus`); gauges are
up-down counters fed with differences, so they add up across caches and registries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from discovery.core.backend import RegistrationState
from discovery.core.connection import ConnectionStatus
from discovery.core.models import Instance, Snapshot
from discovery.observability.metrics import MetricsListener

__all__ = ["OpenTelemetryMetrics"]

_COUNTED_REGISTRATION_STATES = frozenset(
    {RegistrationState.REGISTERED, RegistrationState.LOST, RegistrationState.RESTORED}
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("service-discovery")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0"


class OpenTelemetryMetrics(MetricsListener):
    """A :class:`~discovery.observability.MetricsListener` recording OpenTelemetry instruments from the meter
    ``discovery`` of ``meter_provider`` (default: the global one).

    Thread-safe: the SDK's instruments are, and the few differences kept here are locked.
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        self._lock = threading.Lock()
        meter = metrics.get_meter("discovery", _version(), meter_provider=meter_provider)
        # A pick is the hot path: an SDK counter's add() costs microseconds (attributes hashed per call), so picks
        # are counted here and reported as an observable counter when a reader collects.
        self._pick_counts: dict[tuple[str, str], int] = {}
        self.picks = meter.create_observable_counter(
            "discovery.picks", [self._observe_picks], "{pick}", "Instances picked by client caches."
        )
        self.pick_failures = meter.create_counter(
            "discovery.pick_failures", "{pick}", "Picks that found no instance."
        )
        self.set_aside = meter.create_up_down_counter(
            "discovery.set_aside_instances", "{instance}", "Instances set aside by failure feedback."
        )
        self.stale_snapshots = meter.create_counter(
            "discovery.stale_snapshots", "{snapshot}", "Snapshots delivered marked stale (backend unreachable)."
        )
        self.watch_stale = meter.create_up_down_counter(
            "discovery.watch.stale", "{watch}", "1 while a watched service serves its last known set, marked stale."
        )
        self.watch_lag = meter.create_histogram(
            "discovery.watch.lag", "s", "Seconds from a backend watch yielding a snapshot to every subscriber"
            " having it."
        )
        self.registrations = meter.create_up_down_counter(
            "discovery.registrations", "{registration}", "Live registrations by state."
        )
        self.registration_transitions = meter.create_counter(
            "discovery.registration.transitions", "{transition}", "Registration state changes, by the state entered."
        )
        self.connections = meter.create_up_down_counter(
            "discovery.connections", "{connection}", "Backend connections by state."
        )
        self.connection_transitions = meter.create_counter(
            "discovery.connection.transitions", "{transition}", "Connection state changes, by the state entered."
        )
        self._set_aside_last: dict[tuple[str, str], int] = {}
        self._stale_last: dict[tuple[str, str], bool] = {}

    def on_pick(self, instance: Instance) -> None:
        """Count a pick (reported at collection)."""
        key = (instance.namespace, instance.service)
        with self._lock:
            self._pick_counts[key] = self._pick_counts.get(key, 0) + 1

    def _observe_picks(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._pick_counts.items())
        return [Observation(count, {"namespace": namespace, "service": service})
                for (namespace, service), count in counts]

    def on_pick_failed(self, namespace: str, service: str, reason: str) -> None:
        """Count a failed pick."""
        self.pick_failures.add(1, {"namespace": namespace, "service": service, "reason": reason})

    def on_set_aside(self, namespace: str, service: str, count: int) -> None:
        """Add the difference to the last count of this service."""
        with self._lock:
            delta = count - self._set_aside_last.get((namespace, service), 0)
            self._set_aside_last[(namespace, service)] = count
        if delta:
            self.set_aside.add(delta, {"namespace": namespace, "service": service})

    def on_snapshot(self, snapshot: Snapshot, lag: float) -> None:
        """Record the lag; count stale snapshots; flag stale watches."""
        attributes = {"namespace": snapshot.namespace, "service": snapshot.service}
        self.watch_lag.record(lag, attributes)
        key = (snapshot.namespace, snapshot.service)
        with self._lock:
            was_stale = self._stale_last.get(key)
            self._stale_last[key] = snapshot.stale
        if snapshot.stale != was_stale:  # a first snapshot adds 0 or 1, so the series exists from the start
            self.watch_stale.add(int(snapshot.stale) - int(bool(was_stale)), attributes)
        if snapshot.stale:
            self.stale_snapshots.add(1, attributes)

    def on_registration_state(
        self, instance: Instance, previous: RegistrationState | None, state: RegistrationState
    ) -> None:
        """Move one registration between states."""
        if previous is not None and previous in _COUNTED_REGISTRATION_STATES:
            self.registrations.add(-1, {"state": previous.value})
        if state in _COUNTED_REGISTRATION_STATES:
            self.registrations.add(1, {"state": state.value})
        self.registration_transitions.add(1, {"state": state.value})

    def on_connection_state(self, status: ConnectionStatus) -> None:
        """Move one connection between states."""
        if status.previous is not None:
            self.connections.add(-1, {"backend": status.backend, "state": status.previous.value})
        self.connections.add(1, {"backend": status.backend, "state": status.state.value})
        self.connection_transitions.add(1, {"backend": status.backend, "state": status.state.value})

    def on_connection_closed(self, status: ConnectionStatus) -> None:
        """A registry closed: its connection leaves the per-state counts."""
        self.connections.add(-1, {"backend": status.backend, "state": status.state.value})
