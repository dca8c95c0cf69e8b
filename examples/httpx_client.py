"""Call a service by name with httpx: the registry resolves ``orders``, the balancer picks, a dead instance
is retried elsewhere and then set aside. Runs on its own: ``python examples/httpx_client.py``
(``DISCOVERY_URL`` picks the backend; default ``memory://``).
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from discovery import Instance, Registry
from discovery.client.httpx_transport import DiscoveryTransport


class Orders(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        body = b'{"items": ["apple", "pear"]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Orders)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with Registry.connect() as registry:
        registry.register(Instance("orders", "orders-1", "127.0.0.1", server.server_address[1]))
        registry.register(Instance("orders", "orders-2", "127.0.0.1", unused_port()))  # nothing listens there

        transport = DiscoveryTransport(registry)
        with httpx.Client(transport=transport) as client:
            for _ in range(4):
                print(client.get("http://orders/api/items").json())
            cache = transport.cache("orders")
            print("set aside after connect failures:", [i.id for i in cache.instances() if i not in cache.pickable()])
    server.shutdown()


if __name__ == "__main__":
    main()
