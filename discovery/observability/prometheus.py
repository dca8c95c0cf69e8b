"""Prometheus metrics (``pip install 'service-discovery[prometheus]'``)::

    from prometheus_client import start_http_server
    from discovery.observability import add_metrics_listener
    from discovery.observability.prometheus import PrometheusMetrics

    add_metrics_listener(PrometheusMetrics())           # into prometheus_client's default registry
    start_http_server(9464, addr="127.0.0.1")            # GET /metrics

Metric                                          Type       Labels
==============================================  =========  ====================================
``discovery_picks_total``                       counter    namespace, service
``discovery_pick_failures_total``               counter    namespace, service, reason
``discovery_set_aside_instances``               gauge      namespace, service
``discovery_stale_snapshots_total``             counter    namespace, service
``discovery_watch_stale``                       gauge      namespace, service (1 while stale)
``discovery_watch_lag_seconds``                 histogram  namespace, service
``discovery_registrations``                     gauge      state (live registrations per state)
``discovery_registration_transitions_total``    counter    state
``discovery_connections``                       gauge      backend, state (open connections per state)
``discovery_connection_transitions_total``      counter    backend, state

Labels are per service, never per instance, so the series count grows with the services a process uses, not with
the fleet. ``discovery_set_aside_instances`` is the last count reported by any cache of that service.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from discovery.core.backend import RegistrationState
from discovery.core.connection import ConnectionStatus
from discovery.core.models import Instance, Snapshot
from discovery.observability.metrics import MetricsListener

__all__ = ["LAG_BUCKETS", "PrometheusMetrics"]

#: Watch lag buckets (seconds): delivering a snapshot normally takes microseconds; a slow subscriber, much more.
LAG_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)

_COUNTED_REGISTRATION_STATES = frozenset(
    {RegistrationState.REGISTERED, RegistrationState.LOST, RegistrationState.RESTORED}
)


class PrometheusMetrics(MetricsListener):
    """A :class:`~discovery.observability.MetricsListener` keeping Prometheus metrics in ``registry`` (default:
    ``prometheus_client.REGISTRY``, which ``start_http_server`` serves). Create one per registry.

    Thread-safe: prometheus_client's metrics lock internally.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY, *, prefix: str = "discovery") -> None:
        self.picks = Counter(f"{prefix}_picks", "Instances picked by client caches.", ["namespace", "service"],
                             registry=registry)
        self.pick_failures = Counter(
            f"{prefix}_pick_failures", "Picks that found no instance.", ["namespace", "service", "reason"],
            registry=registry,
        )
        self.set_aside = Gauge(
            f"{prefix}_set_aside_instances", "Instances set aside by failure feedback.", ["namespace", "service"],
            registry=registry,
        )
        self.stale_snapshots = Counter(
            f"{prefix}_stale_snapshots", "Snapshots delivered marked stale (backend unreachable).",
            ["namespace", "service"], registry=registry,
        )
        self.watch_stale = Gauge(
            f"{prefix}_watch_stale", "1 while a watched service serves its last known set, marked stale.",
            ["namespace", "service"], registry=registry,
        )
        self.watch_lag = Histogram(
            f"{prefix}_watch_lag_seconds", "Seconds from a backend watch yielding a snapshot to every subscriber"
            " having it.", ["namespace", "service"], buckets=LAG_BUCKETS, registry=registry,
        )
        self.registrations = Gauge(f"{prefix}_registrations", "Live registrations by state.", ["state"],
                                   registry=registry)
        self.registration_transitions = Counter(
            f"{prefix}_registration_transitions", "Registration state changes, by the state entered.", ["state"],
            registry=registry,
        )
        self.connections = Gauge(f"{prefix}_connections", "Backend connections by state.", ["backend", "state"],
                                 registry=registry)
        self.connection_transitions = Counter(
            f"{prefix}_connection_transitions", "Backend connection state changes, by the state entered.",
            ["backend", "state"], registry=registry,
        )
        # A pick is the hot path: the labelled child is looked up once per service, not per pick.
        self._pick_children: dict[tuple[str, str], Counter] = {}

    def on_pick(self, instance: Instance) -> None:
        """Count a pick."""
        key = (instance.namespace, instance.service)
        child = self._pick_children.get(key)
        if child is None:
            child = self._pick_children[key] = self.picks.labels(*key)
        child.inc()

    def on_pick_failed(self, namespace: str, service: str, reason: str) -> None:
        """Count a failed pick."""
        self.pick_failures.labels(namespace, service, reason).inc()

    def on_set_aside(self, namespace: str, service: str, count: int) -> None:
        """Set the set-aside gauge."""
        self.set_aside.labels(namespace, service).set(count)

    def on_snapshot(self, snapshot: Snapshot, lag: float) -> None:
        """Observe the lag; count stale snapshots and flag stale watches."""
        labels = (snapshot.namespace, snapshot.service)
        self.watch_lag.labels(*labels).observe(lag)
        self.watch_stale.labels(*labels).set(1 if snapshot.stale else 0)
        if snapshot.stale:
            self.stale_snapshots.labels(*labels).inc()

    def on_registration_state(
        self, instance: Instance, previous: RegistrationState | None, state: RegistrationState
    ) -> None:
        """Move one registration between the per-state gauges."""
        if previous is not None and previous in _COUNTED_REGISTRATION_STATES:
            self.registrations.labels(previous.value).dec()
        if state in _COUNTED_REGISTRATION_STATES:
            self.registrations.labels(state.value).inc()
        self.registration_transitions.labels(state.value).inc()

    def on_connection_state(self, status: ConnectionStatus) -> None:
        """Move one connection between the per-state gauges."""
        if status.previous is not None:
            self.connections.labels(status.backend, status.previous.value).dec()
        self.connections.labels(status.backend, status.state.value).inc()
        self.connection_transitions.labels(status.backend, status.state.value).inc()

    def on_connection_closed(self, status: ConnectionStatus) -> None:
        """A registry closed: its connection leaves the per-state gauges."""
        self.connections.labels(status.backend, status.state.value).dec()
