"""Fixtures for the client-side tests: an isolated URL per backend, and real local HTTP servers."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.harness import free_ports, isolated_url

#: Every client test that needs a backend runs on the memory backend and on each real one.
BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("zookeeper", id="zookeeper", marks=pytest.mark.servers),
    pytest.param("etcd", id="etcd", marks=pytest.mark.servers),
    pytest.param("consul", id="consul", marks=pytest.mark.servers),
]
#: Short liveness settings, as in tests/conformance/test_<backend>.py.
SHORT_TTL = 2.0


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    """An isolated URL on each backend in turn."""
    return isolated_url(request.param, request, f"client-{uuid.uuid4().hex[:16]}", ttl=SHORT_TTL)


@pytest.fixture
def memory_url() -> str:
    """An isolated in-memory store."""
    return f"memory:///client-{uuid.uuid4().hex[:16]}"


@dataclass
class NamedHTTPServer:
    """A real HTTP/1.1 server on 127.0.0.1 answering every GET with its name; counts the requests it served."""

    name: str
    server: ThreadingHTTPServer
    thread: threading.Thread
    hits: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def start_http_server(name: str) -> NamedHTTPServer:
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes; with Nagle on, the body would wait ~40 ms for a delayed ACK.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            hits.append(self.path)
            body = f"{name} {self.headers.get('Host')}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return NamedHTTPServer(name, server, thread, hits)


@pytest.fixture
def http_servers() -> Iterator[Callable[[str], NamedHTTPServer]]:
    """Factory of real local HTTP servers, all shut down after the test."""
    started: list[NamedHTTPServer] = []

    def make(name: str) -> NamedHTTPServer:
        server = start_http_server(name)
        started.append(server)
        return server

    yield make
    for server in started:
        server.close()


def dead_ports(count: int) -> list[int]:
    """Distinct 127.0.0.1 ports nothing listens on (bound together to get free ones, then closed)."""
    return list(free_ports(tuple(f"dead-{n}" for n in range(count))).values())


@pytest.fixture
def dead_port() -> int:
    """A 127.0.0.1 port nothing listens on: connecting is refused."""
    return dead_ports(1)[0]
