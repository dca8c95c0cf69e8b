"""Interop with Apache Curator x-discovery (Debian's Curator 5.4 jars), both ways, with a real ZooKeeper.

A small Java program (tests/backends/zookeeper_interop/) is compiled with the JDK. It registers and queries
through Curator's ``ServiceDiscovery`` with Spring Cloud Zookeeper's payload class (a same-named stand-in) or a
plain ``Map`` payload.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from discovery.core.models import Instance, Status
from discovery.registry.async_registry import AsyncRegistry
from discovery.testing import eventually
from tests.backends.zookeeper_support import backend_url
from tests.harness import ServerHandle

pytestmark = pytest.mark.servers

SOURCES = Path(__file__).parent / "zookeeper_interop"
JARS = (
    "curator-x-discovery", "curator-framework", "curator-client", "zookeeper", "zookeeper-jute", "guava",
    "jackson-core", "jackson-databind", "jackson-annotations", "slf4j-api", "slf4j-nop",
)
CONVERGE = 15.0


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def java_classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Compile the Java side once; the classpath to run it with."""
    javac = shutil.which("javac")
    jars = [Path(f"/usr/share/java/{name}.jar") for name in JARS]
    missing = [str(jar) for jar in jars if not jar.exists()]
    if javac is None or missing:
        _unavailable(f"Curator interop needs javac and Debian's Curator jars (missing: {missing or 'javac'})")
    classes = tmp_path_factory.mktemp("curator-interop")
    classpath = ":".join(str(jar) for jar in jars)
    sources = [str(path) for path in SOURCES.rglob("*.java")]
    compiled = subprocess.run(
        [str(javac), "-d", str(classes), "-cp", classpath, *sources], capture_output=True, text=True, check=False
    )
    assert compiled.returncode == 0, f"javac failed:\n{compiled.stderr}"
    return f"{classes}:{classpath}"


def _root(url: str) -> str:
    return "/" + url.split("/", 3)[3].split("?")[0]


class JavaRegistrant:
    """A Curator registration held by a Java process until :meth:`close`."""

    def __init__(self, classpath: str, *args: str) -> None:
        self.process = subprocess.Popen(
            ["java", "-cp", classpath, "CuratorInterop", "register", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    async def ready(self) -> None:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), 60)
        if line.strip() != "READY":
            self.process.kill()
            _, err = self.process.communicate()
            raise AssertionError(f"Curator registrant failed: {line!r}\n{err}")

    async def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        code = await asyncio.to_thread(self.process.wait, 60)
        assert code == 0, self.process.stderr.read() if self.process.stderr else code


@pytest.fixture
def java_processes() -> Iterator[list[JavaRegistrant]]:
    started: list[JavaRegistrant] = []
    yield started
    for registrant in started:
        if registrant.process.poll() is None:
            registrant.process.kill()
            registrant.process.wait()


async def _curator_query(classpath: str, server: ServerHandle, base_path: str, service: str,
                         payload: str) -> list[dict[str, Any]]:
    result = await asyncio.to_thread(
        subprocess.run,
        ["java", "-cp", classpath, "CuratorInterop", "query", f"{server.host}:{server.port}", base_path, service,
         payload],
        capture_output=True, text=True, timeout=120, check=False,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines and lines[-1] == "DONE", f"Curator query failed:\n{result.stderr}"
    return [json.loads(line) for line in lines[:-1]]


@pytest.mark.parametrize("payload", ["spring", "map"])
async def test_curator_registered_instance_is_found_here(
    zookeeper_server: ServerHandle, java_classpath: str, java_processes: list[JavaRegistrant], payload: str
) -> None:
    url = backend_url(zookeeper_server)
    base_path = f"{_root(url)}/default"
    registrant = JavaRegistrant(java_classpath, f"{zookeeper_server.host}:{zookeeper_server.port}", base_path,
                                "orders", "java-1", "127.0.0.7", "8443", "OUT_OF_SERVICE", payload)
    java_processes.append(registrant)
    async with await AsyncRegistry.connect(url) as registry, registry.watch("orders") as watch:
        await registrant.ready()
        seen = await watch.until(lambda s: "java-1" in s.ids(), CONVERGE)
        found = seen.get("java-1")
        assert found is not None
        assert (found.id, found.address, found.port, found.service) == ("java-1", "127.0.0.7", 8443, "orders")
        assert found.status is Status.DRAINING  # Spring's OUT_OF_SERVICE
        assert found.labels == {"team": "java"}
        assert await registry.instances("orders", statuses=None) == (found,)
        assert await registry.services() == ("orders",)
        await registrant.close()
        await watch.until(lambda s: not s.ids(), CONVERGE)


@pytest.mark.parametrize("payload", ["spring", "map"])
async def test_instance_registered_here_is_returned_by_curator(
    zookeeper_server: ServerHandle, java_classpath: str, payload: str
) -> None:
    # Curator with a Map payload cannot resolve Spring's "@class": such deployments write no "@class".
    url = backend_url(zookeeper_server, **({"payload_class": ""} if payload == "map" else {}))
    ours = Instance("orders", "py-1", "127.0.0.9", 9090, labels={"team": "python"}, status=Status.DRAINING)
    async with await AsyncRegistry.connect(url) as registry:
        await registry.register(ours)
        await registry.register(Instance("orders", "py-2", "127.0.0.10", 9091))
        found = await _curator_query(java_classpath, zookeeper_server, f"{_root(url)}/default", "orders", payload)
    by_id = {line["id"]: line for line in found}
    assert set(by_id) == {"py-1", "py-2"}
    first = by_id["py-1"]
    assert (first["name"], first["address"], first["port"], first["serviceType"]) == (
        "orders", "127.0.0.9", 9090, "DYNAMIC"
    )
    assert first["metadata"]["instance_status"] == "OUT_OF_SERVICE"
    assert first["metadata"]["team"] == "python"
    assert by_id["py-2"]["metadata"]["instance_status"] == "UP"
    expected_class = "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance" if payload == "spring" else "map"
    assert first["payloadClass"] == expected_class


async def test_closed_registry_leaves_nothing_for_curator(
    zookeeper_server: ServerHandle, java_classpath: str
) -> None:
    url = backend_url(zookeeper_server)
    async with await AsyncRegistry.connect(url) as registry:
        await registry.register(Instance("orders", "py-1", "127.0.0.9", 9090))
        await eventually(lambda: registry.instances("orders"), lambda found: len(found) == 1, CONVERGE)
    found = await _curator_query(java_classpath, zookeeper_server, f"{_root(url)}/default", "orders", "spring")
    assert found == []
