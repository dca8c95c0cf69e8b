"""The ``discovery`` command for Services: apply/get/describe/delete in process on the embedded backend, bad
manifests rejected with the field named, and the README's walk-through (manifest -> proxy -> curl -> DNS) with
real processes against a real etcd."""

from __future__ import annotations

import http.server
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest

from discovery import Instance, Registry
from discovery.cli import main
from tests.harness import ServerHandle, free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "manifests"
EXTERNAL_IPS = str(EXAMPLES / "hello-node-svc-externalips.yaml")
LOAD_BALANCER = str(EXAMPLES / "hello-node-svc-loadbalancer.yaml")


@pytest.fixture
def ranges(monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    subnet = f"127.{os.getpid() % 200 + 20}.{time.monotonic_ns() % 250 + 1}"
    port = free_port()
    monkeypatch.setenv("DISCOVERY_CLUSTER_IP_RANGE", f"{subnet}.0/24")
    monkeypatch.setenv("DISCOVERY_NODE_PORT_RANGE", f"{port}-{port}")
    return subnet, port


def test_apply_get_describe_delete(memory_url: str, ranges: tuple[str, int],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    subnet, node_port = ranges
    assert main(["--url", memory_url, "apply", "-f", EXTERNAL_IPS]) == 0
    assert "service/hello-node-svc created" in capsys.readouterr().out
    assert main(["--url", memory_url, "apply", "-f", EXTERNAL_IPS]) == 0
    assert "service/hello-node-svc unchanged" in capsys.readouterr().out
    assert main(["--url", memory_url, "apply", "-f", LOAD_BALANCER]) == 0
    assert "service/hello-node-svc configured" in capsys.readouterr().out

    assert main(["--url", memory_url, "get", "services"]) == 0
    table = capsys.readouterr().out
    assert re.search(rf"hello-node-svc .*LoadBalancer .*{re.escape(subnet)}\.\d+ .*127\.0\.0\.50 .*80:{node_port}/TCP",
                     table), table

    with Registry.connect(memory_url) as registry:
        registry.register(Instance("hello-node", "hello-1", "127.0.0.1", 8080, labels={"app": "hello-node"}))
        assert main(["--url", memory_url, "get", "endpoints", "hello-node-svc"]) == 0
        assert re.search(r"hello-node-svc .*http .*127\.0\.0\.1:8080", capsys.readouterr().out)
        assert main(["--url", memory_url, "describe", "service", "hello-node-svc"]) == 0
        described = capsys.readouterr().out
        assert "hello-node-svc.default.svc.cluster.local" in described
        assert "127.0.0.1:8080" in described and f"{node_port}/TCP" in described
        assert main(["--url", memory_url, "get", "instances", "hello-node"]) == 0
        assert "hello-1" in capsys.readouterr().out

    assert main(["--url", memory_url, "delete", "service", "hello-node-svc"]) == 0
    assert 'service "hello-node-svc" deleted' in capsys.readouterr().out
    assert main(["--url", memory_url, "delete", "-f", LOAD_BALANCER]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["--url", memory_url, "describe", "service", "hello-node-svc"]) == 1


SEED_LOAD_BALANCER = """apiVersion: v1
kind: Service
metadata:
  name: hello-node-svc
spec:
  selector:
    app: hello-node
  ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: 8080
  type: LoadBalancer
  loadBalancerIP: 생성한 정적 IP
"""


@pytest.mark.parametrize(
    ("manifest", "named"),
    [
        (SEED_LOAD_BALANCER, "spec.loadBalancerIP: '생성한 정적 IP' is not an IP address"),
        (SEED_LOAD_BALANCER.replace("port: 80", "port: 80000"), "spec.ports[0].port: 80000 is outside 1-65535"),
        (SEED_LOAD_BALANCER.replace("protocol: TCP", "protocol: UDP"), "spec.ports[0].protocol: 'UDP' is not"),
        (SEED_LOAD_BALANCER.replace("name: http\n", "nodePort: 31000\n").replace("LoadBalancer", "ClusterIP")
         .replace("  loadBalancerIP: 생성한 정적 IP\n", ""), "spec.ports[0].nodePort: is only allowed"),
        (SEED_LOAD_BALANCER.replace("hello-node-svc", "Hello_Node"), "metadata.name: 'Hello_Node' is not a DNS"),
        (SEED_LOAD_BALANCER.replace("app: hello-node", "app: -bad-"), "spec.selector: label value '-bad-'"),
        (SEED_LOAD_BALANCER.replace("kind: Service", "kind: Deployment"), "kind: 'Deployment' is not supported"),
        (SEED_LOAD_BALANCER.replace("  type: LoadBalancer\n", "  sessionAffinity: ClientIP\n  type: LoadBalancer\n"),
         "bad.yaml: spec.sessionAffinity: is not supported"),
        (SEED_LOAD_BALANCER.replace("      targetPort: 8080\n", "      targetPort: 8080\n      appProtocol: h2\n"),
         "spec.ports[0].appProtocol"),
        (SEED_LOAD_BALANCER.replace("type: LoadBalancer", "type: ExternalName"), "spec.externalName: is required"),
    ],
)
def test_bad_manifests_name_the_field(manifest: str, named: str, memory_url: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(manifest)
    assert main(["--url", memory_url, "apply", "-f", "bad.yaml"]) == 2
    assert named in capsys.readouterr().err
    assert main(["--url", memory_url, "get", "services", "-A"]) == 0
    assert "hello-node-svc" not in capsys.readouterr().out, "nothing was written"


# -- the README walk-through with real processes ---------------------------------------------------------------


class Process:
    """A ``discovery`` subprocess whose stdout lines are collected by a thread."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen([sys.executable, "-m", "discovery.cli", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.popen.stdout is not None
        threading.Thread(target=self._read, args=(self.popen.stdout,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            if match := re.search(pattern, line):
                return match
        self.stop()
        stderr = self.popen.stderr.read() if self.popen.stderr else ""
        raise AssertionError(f"no line matching {pattern!r}; stdout: {''.join(seen)!r}; stderr: {stderr!r}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture
def hello_node() -> Iterator[int]:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"Hello World!\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.mark.servers
def test_readme_walkthrough_with_processes(etcd_server: ServerHandle, ranges: tuple[str, int], hello_node: int,
                                           tmp_path: Path) -> None:
    url = f"{etcd_server.url}/readme-{time.monotonic_ns()}?ttl=2"
    env = {**os.environ, "DISCOVERY_URL": url}
    service_port = free_port()  # the seed's port 80 needs root and a free :80; everything else is the seed's
    manifest = tmp_path / "hello-node-svc.yaml"
    manifest.write_text(Path(EXTERNAL_IPS).read_text().replace("port: 80\n", f"port: {service_port}\n")
                        .replace("targetPort: 8080", f"targetPort: {hello_node}"))
    applied = subprocess.run([sys.executable, "-m", "discovery.cli", "apply", "-f", str(manifest)], env=env,
                             capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0 and "service/hello-node-svc created" in applied.stdout, applied.stderr

    processes = [
        Process("register", "hello-node", "hello-1", "127.0.0.1", str(hello_node), "--label", "app=hello-node",
                env=env),
        proxy := Process("proxy", "--rescan-interval", "0.2", env=env),
        dns_server := Process("dns", "--port", "0", "--rescan-interval", "0.2", env=env),
    ]
    try:
        processes[0].wait_for("registered default/hello-node/hello-1")
        proxy.wait_for("proxy ready")
        port = int(dns_server.wait_for(r"dns ready on 127\.0\.0\.1:(\d+)").group(1))
        query = dns.message.make_query("hello-node-svc.default.svc.cluster.local", "A")
        [cluster_ip] = [r.to_text() for rrset in dns.query.udp(query, "127.0.0.1", port=port, timeout=3).answer
                        for r in rrset]

        def curl() -> str:
            try:
                with urllib.request.urlopen(f"http://{cluster_ip}:{service_port}/", timeout=3) as response:
                    return str(response.read().decode())
            except OSError as error:
                return repr(error)

        deadline = time.monotonic() + 20
        while (body := curl()) != "Hello World!\n" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert body == "Hello World!\n"
        srv = dns.message.make_query("_http._tcp.hello-node-svc.default.svc.cluster.local", "SRV")
        expected = [f"0 1 {hello_node} hello-1.hello-node-svc.default.svc.cluster.local."]

        def srv_answer() -> list[str]:
            return [r.to_text() for rrset in dns.query.tcp(srv, "127.0.0.1", port=port, timeout=3).answer
                    for r in rrset]

        # The DNS process follows endpoints on its own; the proxy answering does not mean it has them yet.
        deadline = time.monotonic() + 20
        while (answer := srv_answer()) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert answer == expected
    finally:
        for process in processes:
            process.stop()
    assert processes[0].popen.returncode == 0, "register deregistered and exited cleanly on SIGTERM"
