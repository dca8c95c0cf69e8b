"""Operating the library: metrics listeners (and their Prometheus / OpenTelemetry adapters).

Health (``registry.health()``) lives with the registries; connection states in :mod:`discovery.core.connection`.
"""

from discovery.observability.metrics import MetricsListener, add_metrics_listener, remove_metrics_listener

__all__ = ["MetricsListener", "add_metrics_listener", "remove_metrics_listener"]
