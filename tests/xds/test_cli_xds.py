"""``discovery xds``: the issue's "done when" through the command, against etcd, with gRPC's own client in
another process: calls spread evenly over three registered servers and stop reaching a deregistered one
within 2 s, for ``xds:///orders`` and for a Service's ``<svc>.<ns>.svc.cluster.local:<port>``.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from discovery import AsyncRegistry, Instance
from discovery.services import Service, ServicePort, ServiceStore
from tests.harness import ServerHandle
from tests.xds.support import REPO, EchoServer, XdsClientProcess, client_bootstrap

pytestmark = pytest.mark.timeout(180)
DONE_WHEN_BOUND = 2.0


class XdsCommand:
    """``python -m discovery --url URL xds --port 0 ...`` as a process; ``address`` from its ready line."""

    def __init__(self, url: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "discovery", "--url", url, "xds", "--port", "0", "--rescan-interval", "0.2",
             *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        found = re.search(r"xds ready on (\S+)", line)
        if found is None:
            self.process.kill()
            raise AssertionError(f"discovery xds did not start: {line!r} {self.process.stderr.read()!r}")  # type: ignore[union-attr]
        self.address = found.group(1)

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        return self.process.returncode, out


@pytest.fixture
def xds_command() -> Iterator[Callable[..., XdsCommand]]:
    made: list[XdsCommand] = []

    def make(url: str, *args: str) -> XdsCommand:
        command = XdsCommand(url, *args)
        made.append(command)
        return command

    yield make
    for command in made:
        if command.process.poll() is None:
            command.process.kill()
            command.process.wait(10)


@pytest.mark.servers
async def test_done_when_through_the_command_on_etcd(
        etcd_server: ServerHandle, echo_servers: Callable[..., list[EchoServer]],
        xds_clients: Callable[..., XdsClientProcess], xds_command: Callable[..., XdsCommand]) -> None:
    url = f"{etcd_server.url}/xds-{uuid.uuid4().hex[:8]}?ttl=5"
    servers = echo_servers(3)
    async with AsyncRegistry.connect(url) as registry:
        await ServiceStore(registry.backend).apply(Service(
            "orders-svc", "default", selector={"app": "orders"}, ports=(ServicePort(50051, "grpc", name="grpc"),)))
        registrations = [await registry.register(Instance("orders", s.name, "127.0.0.1", s.port,
                                                          labels={"app": "orders"}, ports={"grpc": s.port}))
                         for s in servers]
        command = await asyncio.to_thread(xds_command, url)
        client = xds_clients(client_bootstrap(command.address))
        targets = ["xds:///orders", "xds:///orders-svc.default.svc.cluster.local:50051"]
        for target in targets:
            warm_up = await client.call(target, 30)
            assert set(warm_up["counts"]) == {s.name for s in servers}, warm_up
            counts = (await client.call(target, 300))["counts"]
            assert sorted(counts.values()) == [100, 100, 100], (target, counts)
            await client.start(target)
            await client.wait_for_servers(target, [s.name for s in servers])
        await registrations[0].deregister()
        deregistered = time.monotonic()
        await asyncio.sleep(DONE_WHEN_BOUND + 0.5)
        for target in targets:
            stats = await client.stats(target, deregistered - 5)
            assert stats["servers"][servers[0].name][2] <= deregistered + DONE_WHEN_BOUND, target
            late = await client.stats(target, deregistered + DONE_WHEN_BOUND)
            assert set(late["servers"]) == {s.name for s in servers[1:]} and late["errors"][0] == 0, target
        code, out = await asyncio.to_thread(command.stop)
        assert code == 0 and "stopped" in out


@pytest.mark.parametrize("args", [
    ["--client-ca", "ca.pem"],
    ["--cert", "c.pem"],
    ["--token-file", "token"],
])
def test_bad_options_exit_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "token").write_text("secret-token-value")
    done = subprocess.run([sys.executable, "-m", "discovery", "--url", "memory://", "xds", "--port", "0", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert "secret-token-value" not in done.stderr + done.stdout


def test_new_token_is_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "xds.token"
    done = subprocess.run([sys.executable, "-m", "discovery", "xds", "--new-token", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text()
    assert token.count(".") == 2 and "\n" not in token
