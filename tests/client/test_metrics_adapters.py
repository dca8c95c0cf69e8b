"""The Prometheus and OpenTelemetry adapters of the metrics listener (issue 18).

Prometheus: the shipped example serves a real /metrics endpoint in its own process; the test scrapes it over
HTTP and parses the exposition format back. OpenTelemetry: the SDK's in-memory reader collects what the adapter
recorded through the API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from discovery import DownInstancePolicy, Instance, NoInstanceAvailableError, Registry, ServiceCache
from discovery.observability import add_metrics_listener
from discovery.observability.opentelemetry import OpenTelemetryMetrics
from discovery.observability.prometheus import PrometheusMetrics
from tests.client.conftest import dead_ports

ROOT = Path(__file__).resolve().parents[2]


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


@pytest.fixture
def example_process() -> Iterator[tuple[subprocess.Popen[str], int]]:
    (port,) = dead_ports(1)
    env = {key: value for key, value in os.environ.items() if key != "DISCOVERY_URL"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "prometheus_metrics.py"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_the_prometheus_example_serves_metrics_that_a_scrape_parses(
    example_process: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = example_process
    assert process.stdout is not None
    lines = [process.stdout.readline() for _ in range(2)]  # blocks until the example is serving
    assert lines[0].startswith("picked 5x orders-1, 5x orders-2"), lines
    assert f"serving http://127.0.0.1:{port}/metrics" in lines[1], lines

    scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    samples = _samples(scrape.text)
    service = frozenset({("namespace", "default"), ("service", "orders")})
    assert samples[("discovery_picks_total", service)] == 10
    assert samples[("discovery_registrations", frozenset({("state", "registered")}))] == 2
    assert samples[("discovery_connections", frozenset({("backend", "memory"), ("state", "connected")}))] == 1
    assert samples[("discovery_watch_stale", service)] == 0
    assert samples[("discovery_watch_lag_seconds_count", service)] >= 1

    ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10)
    assert ready.status_code == 200 and json.loads(ready.text)["ready"] is True

    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0


def test_the_prometheus_adapter_counts_failures_set_asides_and_registration_states(memory_url: str) -> None:
    collector = CollectorRegistry()
    remove = add_metrics_listener(PrometheusMetrics(collector))
    try:
        with Registry.connect(memory_url) as registry:
            one = registry.register(Instance("web", "web-1", "127.0.0.1", 8080))
            registry.register(Instance("web", "web-2", "127.0.0.1", 8081))
            with ServiceCache.open(registry, "web", failures=DownInstancePolicy(error_threshold=1)) as cache:
                cache.note_error(cache.pick())
                assert collector.get_sample_value(
                    "discovery_set_aside_instances", {"namespace": "default", "service": "web"}) == 1
            with ServiceCache.open(registry, "none") as empty, pytest.raises(NoInstanceAvailableError):
                empty.pick()
            assert collector.get_sample_value(
                "discovery_pick_failures_total", {"namespace": "default", "service": "none", "reason": "no-instance"}
            ) == 1
            one.deregister()
            assert collector.get_sample_value("discovery_registrations", {"state": "registered"}) == 1
            assert collector.get_sample_value("discovery_registration_transitions_total",
                                              {"state": "deregistered"}) == 1
        # Closing the registry deregistered web-2 and closed its connection: both gauges are back to zero.
        assert collector.get_sample_value("discovery_registrations", {"state": "registered"}) == 0
        assert collector.get_sample_value("discovery_connections", {"backend": "memory", "state": "connected"}) == 0
    finally:
        remove()


def test_the_opentelemetry_adapter_records_through_the_api(memory_url: str) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    remove = add_metrics_listener(OpenTelemetryMetrics(meter_provider=provider))
    try:
        with Registry.connect(memory_url) as registry:
            registry.register(Instance("web", "web-1", "127.0.0.1", 8080))
            with ServiceCache.open(registry, "web") as cache:
                for _ in range(3):
                    cache.pick()
            points = _otel_points(reader)
            web = (("namespace", "default"), ("service", "web"))
            assert points[("discovery.picks", web)] == 3
            assert points[("discovery.registrations", (("state", "registered"),))] == 1
            assert points[("discovery.connections", (("backend", "memory"), ("state", "connected")))] == 1
            assert points[("discovery.watch.lag", web)] >= 1  # a histogram: its count
            assert points[("discovery.watch.stale", web)] == 0
    finally:
        remove()
        provider.shutdown()


def _otel_points(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = tuple(sorted((k, str(v)) for k, v in (point.attributes or {}).items()))
                    value = getattr(point, "value", None)
                    found[(metric.name, attributes)] = float(point.count if value is None else value)  # type: ignore[attr-defined]
    return found
