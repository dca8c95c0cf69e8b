"""Findings 9 and 14 (transport): the httpx transport treated any two-label host as ``service.namespace``.

Before the fix ``http://example.com/login`` with an ``Authorization`` header went to whatever a registrant of
service ``example`` in namespace ``com`` had registered (169.254.169.254 in the review); ``https://pypi.org/``
failed with ``NoInstanceAvailableError``, which is not an ``httpx.HTTPError``; and one ``ServiceCache`` (a registry
watch) was opened per distinct host and never closed (300 hosts, 303 caches).

"The normal network path" here is a real forward HTTP proxy on 127.0.0.1, so nothing leaves the machine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from discovery import Instance, Registry
from discovery.client.balancers import NoInstanceAvailableError
from discovery.client.httpx_transport import DiscoveryTransport, NoInstanceTransportError, ServiceRouter


class Recorder:
    """A real HTTP server on 127.0.0.1 answering every GET with its name and recording (path, Authorization)."""

    def __init__(self, name: str) -> None:
        self.seen: list[tuple[str, str | None]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                seen.append((self.path, self.headers.get("Authorization")))
                body = name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorders() -> Iterator[Callable[[str], Recorder]]:
    made: list[Recorder] = []

    def make(name: str) -> Recorder:
        made.append(Recorder(name))
        return made[-1]

    yield make
    for recorder in made:
        recorder.close()


@pytest.fixture
def registry(memory_url: str) -> Iterator[Registry]:
    with Registry.connect(memory_url) as connected:
        yield connected


def test_an_ordinary_domain_name_is_never_captured_by_a_registrant(
    registry: Registry, recorders: Callable[[str], Recorder]
) -> None:
    capture, network = recorders("capture"), recorders("network")
    # A registrant claims "example.com" (service "example" in namespace "com"); "metadata" stands in for the
    # review's 169.254.169.254.
    registry.register(Instance("example", "metadata", "127.0.0.1", capture.port, namespace="com"))
    inner = httpx.HTTPTransport(proxy=f"http://127.0.0.1:{network.port}")
    with httpx.Client(transport=DiscoveryTransport(registry, transport=inner)) as client:
        response = client.get("http://example.com/login", headers={"Authorization": "Bearer user-token"})
    assert response.text == "network"
    assert network.seen == [("http://example.com/login", "Bearer user-token")]
    assert capture.seen == [], "the registrant never saw the request nor the token"


def test_service_hosts_still_resolve(registry: Registry, recorders: Callable[[str], Recorder]) -> None:
    orders = recorders("orders")
    registry.register(Instance("orders", "o-1", "127.0.0.1", orders.port))
    registry.register(Instance("orders", "s-1", "127.0.0.1", orders.port, namespace="staging"))
    router_options = {"namespaces": ("default", "staging"), "suffixes": (".svc.cluster.local",)}
    with httpx.Client(transport=DiscoveryTransport(registry, **router_options)) as client:  # type: ignore[arg-type]
        for url in ("http://orders/a", "http://orders.default/b", "http://orders.staging/c",
                    "http://orders.staging.svc.cluster.local/d"):
            assert client.get(url).text == "orders", url
    assert [path for path, _ in orders.seen] == ["/a", "/b", "/c", "/d"]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("orders", ("default", "orders")),
        ("orders.default", ("default", "orders")),
        ("example.com", None),
        ("pypi.org", None),
        ("orders.staging", None),
        ("orders.staging.svc", ("staging", "orders")),
        ("orders.staging.svc.cluster.local", ("staging", "orders")),
        ("orders.staging.svc.cluster.local.", ("staging", "orders")),
        ("a.b.staging.svc.cluster.local", None),
        ("svc.cluster.local", None),
        ("169.254.169.254", None),
        ("localhost", None),
    ],
)
def test_which_hosts_name_a_service(host: str, expected: tuple[str, str] | None) -> None:
    router = ServiceRouter(suffixes=(".svc", "svc.cluster.local"))
    assert router.resolve(host) == expected


def test_no_instance_is_an_httpx_transport_error(registry: Registry) -> None:
    with httpx.Client(transport=DiscoveryTransport(registry)) as client, pytest.raises(httpx.HTTPError) as raised:
        client.get("http://orders/x")
    assert isinstance(raised.value, httpx.TransportError)
    assert isinstance(raised.value, NoInstanceAvailableError) and isinstance(raised.value, NoInstanceTransportError)
    assert raised.value.request.url.host == "orders"


def test_per_service_caches_are_bounded(registry: Registry, recorders: Callable[[str], Recorder]) -> None:
    server = recorders("any")
    for number in range(30):
        registry.register(Instance(f"svc-{number}", "i-1", "127.0.0.1", server.port))
    transport = DiscoveryTransport(registry, max_caches=8)
    with httpx.Client(transport=transport) as client:
        for number in range(30):
            assert client.get(f"http://svc-{number}/").text == "any"
            assert len(transport.cached_services) <= 8
        assert transport.cached_services[-1] == ("default", "svc-29"), "most recently used last"
        client.get("http://svc-22/")
        assert transport.cached_services[-1] == ("default", "svc-22")
    assert len(server.seen) == 31
