"""A private Consul dev agent for the Consul backend tests: free 127.0.0.1 ports, started and stopped by PID.

``consul agent -dev`` keeps its state in memory, so :meth:`ConsulAgent.restart` is an agent restart with state
loss (the case the backend must heal from).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

PORT_NAMES = ("http", "dns", "serf_lan", "serf_wan", "server")
# Ports that Consul also opens for UDP: a free TCP port is not enough for them.
UDP_PORT_NAMES = frozenset({"dns", "serf_lan", "serf_wan"})


def _free_port(udp_too: bool) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            if not udp_too:
                return port
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
                    return port
            except OSError:
                continue


class ConsulAgent:
    """One ``consul agent -dev`` subprocess bound to 127.0.0.1."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.ports: dict[str, int] = {}
        chosen: set[int] = set()
        for name in PORT_NAMES:
            port = _free_port(name in UDP_PORT_NAMES)
            while port in chosen:
                port = _free_port(name in UDP_PORT_NAMES)
            chosen.add(port)
            self.ports[name] = port
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="consul-agent-", suffix=".log", delete=False)  # noqa: SIM115

    @property
    def http_port(self) -> int:
        """The HTTP API port."""
        return self.ports["http"]

    @property
    def dns_port(self) -> int:
        """The DNS port (UDP and TCP)."""
        return self.ports["dns"]

    @property
    def url(self) -> str:
        """The discovery URL of this agent."""
        return f"consul://{self.host}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        """The agent's PID while it runs."""
        return None if self._process is None else self._process.pid

    def argv(self) -> list[str]:
        """The command line (every port set, gRPC and HTTPS off)."""
        p = self.ports
        return [
            "consul", "agent", "-dev", "-node=discovery-consul-test",
            f"-client={self.host}", f"-bind={self.host}",
            f"-http-port={p['http']}", f"-dns-port={p['dns']}", f"-serf-lan-port={p['serf_lan']}",
            f"-serf-wan-port={p['serf_wan']}", f"-server-port={p['server']}", "-grpc-port=-1", "-https-port=-1",
        ]

    def start(self, timeout: float = 30.0) -> None:
        """Start the agent and wait until it has a leader and has synced its node."""
        self._process = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"consul agent exited with {self._process.returncode}:\n{self.logs()}")
            if self._ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"consul agent not ready after {timeout} s:\n{self.logs()}")

    def stop(self) -> None:
        """SIGTERM the agent (Consul exits 1 on it) and wait; SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same ports: a dev agent forgets every registration."""
        self.stop()
        self.start()

    def get(self, path: str) -> Any:
        """GET a JSON document from the HTTP API."""
        with urllib.request.urlopen(f"http://{self.host}:{self.http_port}{path}", timeout=5) as response:
            return json.loads(response.read() or b"null")

    def put(self, path: str) -> None:
        """PUT with an empty body to the HTTP API."""
        request = urllib.request.Request(f"http://{self.host}:{self.http_port}{path}", method="PUT", data=b"")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def cli(self, *args: str) -> str:
        """Run the ``consul`` CLI against this agent and return its output."""
        env = {**os.environ, "CONSUL_HTTP_ADDR": f"{self.host}:{self.http_port}"}
        env.pop("CONSUL_HTTP_TOKEN", None)
        done = subprocess.run(["consul", *args], env=env, capture_output=True, text=True, timeout=30, check=True)
        return done.stdout

    def logs(self) -> str:
        """The agent's output so far."""
        with open(self._log.name, encoding="utf-8", errors="replace") as log:
            return log.read()

    def _ready(self) -> bool:
        try:
            leader = self.get("/v1/status/leader")
            if not leader:
                return False
            nodes = self.get("/v1/catalog/nodes")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return any(node.get("Node") == "discovery-consul-test" for node in nodes or ())

    def cleanup(self) -> None:
        """Stop the agent and remove its log file."""
        self.stop()
        self._log.close()
        os.unlink(self._log.name)
