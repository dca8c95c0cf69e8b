"""Helpers for the xDS tests: gRPC echo servers, gRPC's xDS client in another process, raw ADS streams."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from discovery.xds import grpc_bootstrap
from discovery.xds.bootstrap import CALL_CREDS_ENV
from discovery.xds.resources import CLUSTER, ENDPOINTS, LISTENER, ROUTE

REPO = Path(__file__).resolve().parents[2]
REPLY_TIMEOUT = 60.0
#: The issue's bound for a change to reach a client once the registry watch has it.
PROPAGATION_BOUND = 0.1


class EchoServer:
    """A gRPC server answering ``/discovery.test.Echo/Who`` with its name (bytes, no proto needed)."""

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "discovery.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(lambda _req, _ctx: name.encode())})
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port(f"{host}:0")
        self._server.start()

    def stop(self) -> None:
        self._server.stop(None)


class XdsClientProcess:
    """gRPC's xDS client in another process (``tests/xds/grpc_client.py``), driven over stdin/stdout."""

    def __init__(self, bootstrap: dict[str, Any], env: dict[str, str] | None = None) -> None:
        environment = dict(os.environ, GRPC_XDS_BOOTSTRAP_CONFIG=json.dumps(bootstrap), **(env or {}))
        environment.pop("GRPC_XDS_BOOTSTRAP", None)
        environment[CALL_CREDS_ENV] = "true"
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.xds.grpc_client"], cwd=REPO, env=environment, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self.pid = self._process.pid
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line)

    def request(self, command: dict[str, Any], timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """Send one command and wait for its reply."""
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        try:
            reply: dict[str, Any] = json.loads(self._lines.get(timeout=timeout))
        except queue.Empty:
            raise AssertionError(f"the gRPC client did not answer {command['op']} within {timeout} s") from None
        return reply

    async def call(self, target: str, count: int, timeout: float = 10.0) -> dict[str, Any]:
        """``count`` calls to ``target``: ``{"counts": {...}, "errors": {...}}`` (from a thread: the event loop
        keeps serving the xDS server meanwhile)."""
        return await asyncio.to_thread(self.request, {"op": "call", "target": target, "count": count,
                                                      "timeout": timeout})

    async def start(self, target: str) -> None:
        """Start calling ``target`` in a loop."""
        await asyncio.to_thread(self.request, {"op": "start", "target": target})

    async def stats(self, target: str, since: float = 0.0) -> dict[str, Any]:
        """The loop's record since ``since`` (``time.monotonic()``)."""
        return await asyncio.to_thread(self.request, {"op": "stats", "target": target, "since": since})

    async def wait_for_servers(self, target: str, names: Iterable[str], timeout: float = 15.0) -> float:
        """Wait until the loop on ``target`` has reached every server in ``names`` (after now); returns when."""
        wanted = set(names)
        since = time.monotonic()
        deadline = since + timeout
        while True:
            seen = set((await self.stats(target, since))["servers"])
            if wanted <= seen:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise AssertionError(f"the client reached only {sorted(seen)} of {sorted(wanted)} in {timeout} s")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)


def client_bootstrap(address: str, **options: Any) -> dict[str, Any]:
    """A bootstrap for a test client (unique node id)."""
    return grpc_bootstrap(address, node_id=f"test-{uuid.uuid4().hex[:8]}", **options)


TYPES = {"LDS": LISTENER, "RDS": ROUTE, "CDS": CLUSTER, "EDS": ENDPOINTS}


class RawAdsStream:
    """A hand-driven ADS stream (grpc.aio), to check the protocol rules a real client relies on."""

    def __init__(self, address: str, *, credentials: grpc.ChannelCredentials | None = None,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._channel = (grpc.aio.secure_channel(address, credentials) if credentials is not None
                         else grpc.aio.insecure_channel(address))
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel).StreamAggregatedResources(
            self._iterate(), metadata=metadata or None)
        # One reader for the stream's life: cancelling a pending read() would cancel the whole call.
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self._responses.put_nowait(response)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the stream's end, delivered to the next receive()
            self._responses.put_nowait(error)

    async def _iterate(self) -> Any:
        while True:
            request = await self._requests.get()
            if request is None:
                return
            yield request

    def send(self, kind: str, names: Iterable[str], *, version: str = "", nonce: str = "",
             error: str | None = None, node_id: str = "raw-test") -> None:
        """Queue one DiscoveryRequest (``kind`` LDS/RDS/CDS/EDS)."""
        request = discovery_pb2.DiscoveryRequest(
            type_url=TYPES[kind], resource_names=sorted(names), version_info=version, response_nonce=nonce)
        request.node.id = node_id
        if error is not None:
            request.error_detail.code = 3
            request.error_detail.message = error
        self._requests.put_nowait(request)

    async def receive(self, timeout: float = 10.0) -> Any:
        """The next DiscoveryResponse (TimeoutError if none comes)."""
        async with asyncio.timeout(timeout):
            item = await self._responses.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def nothing_for(self, seconds: float) -> None:
        """Assert that no response arrives within ``seconds``."""
        try:
            response = await self.receive(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response {response.type_url} version {response.version_info} with "
                             f"{len(response.resources)} resources")

    async def close(self) -> None:
        self._requests.put_nowait(None)
        self._call.cancel()
        self._reader.cancel()
        await self._channel.close()


def unpack_names(response: Any) -> list[str]:
    """The names of the resources in a DiscoveryResponse."""
    return [m.cluster_name if response.type_url == ENDPOINTS else m.name for m in unpack(response)]


def unpack(response: Any) -> list[Any]:
    """The messages in a DiscoveryResponse."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2

    kinds: dict[str, Callable[[], Any]] = {
        LISTENER: listener_pb2.Listener, ROUTE: route_pb2.RouteConfiguration, CLUSTER: cluster_pb2.Cluster,
        ENDPOINTS: endpoint_pb2.ClusterLoadAssignment,
    }
    messages = []
    for packed in response.resources:
        message = kinds[response.type_url]()
        packed.Unpack(message)
        messages.append(message)
    return messages


def endpoint_ports(assignment: Any) -> list[int]:
    """The ports of every endpoint of a ClusterLoadAssignment."""
    return sorted(lb.endpoint.address.socket_address.port_value
                  for locality in assignment.endpoints for lb in locality.lb_endpoints)
