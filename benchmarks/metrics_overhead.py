"""What the metrics listener costs a pick: ``ServiceCache.pick()`` with no listener, with the Prometheus adapter,
and with the OpenTelemetry adapter (SDK ``MeterProvider`` with an in-memory reader).

    .venv/bin/python -m benchmarks.metrics_overhead [--picks 200000] [--rounds 3]

Each pick is timed alone with ``perf_counter_ns`` minus the timer's own median cost (as benchmarks.client_pick
does); the three setups alternate in rounds so drift hits all alike; the table gives the median and p99 over all
rounds, in microseconds. RoundRobin over 10 watched instances on the memory backend.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

from benchmarks.client_pick import percentile, time_each, timer_cost
from discovery import Instance, Registry, ServiceCache
from discovery.cli.tables import render_table
from discovery.observability import MetricsListener, add_metrics_listener
from discovery.observability.opentelemetry import OpenTelemetryMetrics
from discovery.observability.prometheus import PrometheusMetrics


def _setups() -> list[tuple[str, Callable[[], MetricsListener | None]]]:
    return [
        ("no metrics listener", lambda: None),
        ("PrometheusMetrics", lambda: PrometheusMetrics(CollectorRegistry())),
        ("OpenTelemetryMetrics (SDK)",
         lambda: OpenTelemetryMetrics(meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]))),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picks", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    overhead = timer_cost()
    samples: dict[str, list[float]] = {name: [] for name, _ in _setups()}
    with Registry.connect("memory:///bench-metrics") as registry:
        for n in range(10):
            registry.register(Instance("bench", f"bench-{n:02d}", "127.0.0.1", 10000 + n))
        with ServiceCache.open(registry, "bench") as cache:
            for _ in range(args.rounds):
                for name, make in _setups():
                    listener = make()
                    remove = add_metrics_listener(listener) if listener is not None else (lambda: None)
                    try:
                        time_each(cache.pick, 20_000, overhead)  # warm up (labelled children, caches)
                        samples[name] += time_each(cache.pick, args.picks, overhead)
                    finally:
                        remove()
    rows = [(name, f"{statistics.median(values):.3f}", f"{percentile(values, 99):.3f}")
            for name, values in samples.items()]
    print(f"ServiceCache.pick() with RoundRobin over 10 instances, {args.rounds} x {args.picks} picks per setup")
    print(render_table(["setup", "median µs", "p99 µs"], rows))


if __name__ == "__main__":
    main()
