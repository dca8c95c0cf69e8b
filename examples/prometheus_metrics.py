"""Serve the library's Prometheus metrics on /metrics (and a readiness verdict on /ready) while a client picks.

    python examples/prometheus_metrics.py --port 9464        # then: curl http://127.0.0.1:9464/metrics

Needs ``pip install 'service-discovery[prometheus]'``. ``DISCOVERY_URL`` picks the backend (default ``memory://``).
Stop it with Ctrl-C or SIGTERM. Prometheus scrape config::

    scrape_configs:
      - job_name: orders-client
        static_configs: [{targets: ["127.0.0.1:9464"]}]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from discovery import Instance, Registry, ServiceCache
from discovery.observability import add_metrics_listener
from discovery.observability.prometheus import PrometheusMetrics


def serve(registry: Registry, port: int) -> ThreadingHTTPServer:
    """/metrics for Prometheus, /ready for a readiness probe (200 when ready, 503 with the reasons when not)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                status, kind, body = 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
            elif self.path == "/ready":
                health = registry.health()
                status, kind = (200 if health.ready else 503), "application/json"
                body = json.dumps(health.as_dict()).encode()
            else:
                status, kind, body = 404, "text/plain", b"not found\n"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9464)
    port = parser.parse_args().port

    add_metrics_listener(PrometheusMetrics())  # before connecting, so the first connection state is counted
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Registry.connect() as registry:
        registry.register(Instance("orders", "orders-1", "127.0.0.1", 8080))
        registry.register(Instance("orders", "orders-2", "127.0.0.1", 8081))
        server = serve(registry, port)
        with ServiceCache.open(registry, "orders") as cache:
            picks = [cache.pick().id for _ in range(10)]
            print(f"picked {picks.count('orders-1')}x orders-1, {picks.count('orders-2')}x orders-2", flush=True)
            print(f"serving http://127.0.0.1:{server.server_port}/metrics and /ready", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
        server.shutdown()


if __name__ == "__main__":
    main()
