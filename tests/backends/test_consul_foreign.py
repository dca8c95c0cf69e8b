"""Consul services registered by Consul's own ecosystem are instances too (read-only).

Three registrations a new user finds in a real catalog: one made through the HTTP API exactly as Spring
Cloud Consul makes it (its ``NewService`` body: ID, Name, Tags, Address, Meta, Port, Check with a TTL that its
heartbeat passes), one from a plain service definition (``consul services register file.hcl``), and one
failing its check. They show as 2 UP + 1 DOWN in ``instances``, ``services()`` and a watch's first snapshot of
an unscoped registry's ``default`` namespace (docs/decisions/consul-record-layout.md).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from discovery import AsyncRegistry
from discovery.core.foreign import foreign_key_of
from discovery.core.models import Instance, Status
from discovery_consul import ConsulBackend
from tests.backends.consul_support import http_json, started_backend, unique
from tests.harness import ServerHandle

pytestmark = pytest.mark.servers


def put_json(consul: ServerHandle, path: str, body: object) -> None:
    """``PUT`` a JSON body to the agent's HTTP API, as a Java or Go client would."""
    request = urllib.request.Request(
        f"http://{consul.host}:{consul.port}{path}",
        method="PUT",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


def spring_new_service(service: str, port: int, *, ttl: str = "30s") -> dict[str, object]:
    """The body Spring Cloud Consul's ConsulServiceRegistry sends (NewService, Jackson, nulls included):
    instance id ``<app>-<port>``, ``secure`` in Meta, configured tags, a heartbeat (TTL) check."""
    return {
        "ID": f"{service}-{port}",
        "Name": service,
        "Tags": ["version=2", "blue"],
        "Address": "127.0.0.1",
        "Meta": {"secure": "false", "zone": "eu-1a", "group": "backend"},
        "Port": port,
        "EnableTagOverride": None,
        "Check": {
            "Interval": None,
            "TTL": ttl,
            "HTTP": None,
            "DeregisterCriticalServiceAfter": "90m",
            "Status": None,
        },
        "Checks": None,
    }


def consul_cli_register(consul: ServerHandle, definition: str, workdir: Path) -> None:
    """``consul services register file.hcl`` with the consul binary (Debian's 1.8.7), against the test agent."""
    binary = shutil.which("consul")
    if binary is None:
        pytest.fail("the consul binary is needed (scripts/install-system.sh installs it)")
    path = workdir / "service.hcl"
    path.write_text(definition, encoding="utf-8")
    subprocess.run(
        [binary, "services", "register", f"-http-addr=http://{consul.host}:{consul.port}", str(path)],
        check=True, capture_output=True, timeout=30,
    )


@pytest_asyncio.fixture
async def ecosystem(consul_server: ServerHandle, tmp_path: Path) -> AsyncIterator[str]:
    """A service with the three foreign registrations; yields its name, deregisters them afterwards."""
    name = unique("orders")
    spring = spring_new_service(name, 8080)
    put_json(consul_server, "/v1/agent/service/register", spring)
    put_json(consul_server, f"/v1/agent/check/pass/service:{name}-8080", None)  # Spring's heartbeat
    consul_cli_register(consul_server, f'''service {{
  name = "{name}"
  id = "{name}-cli"
  address = "127.0.0.1"
  port = 8081
  tags = ["cli"]
}}
''', tmp_path)
    # A Spring-style instance whose heartbeat never came: its TTL check stays critical.
    put_json(consul_server, "/v1/agent/service/register", spring_new_service(name, 8082))
    try:
        yield name
    finally:
        for service_id in (f"{name}-8080", f"{name}-cli", f"{name}-8082"):
            http_json(consul_server.host, consul_server.port, f"/v1/agent/service/deregister/{service_id}", "PUT")


async def test_spring_cli_and_critical_registrations_are_two_up_and_one_down(
    consul_server: ServerHandle, ecosystem: str
) -> None:
    async with AsyncRegistry.connect(consul_server.url) as registry:
        up = await registry.instances(ecosystem)
        assert sorted(i.id for i in up) == [f"{ecosystem}-8080", f"{ecosystem}-cli"]
        every = {i.id: i for i in await registry.instances(ecosystem, statuses=None)}
        assert {i: every[i].status for i in every} == {
            f"{ecosystem}-8080": Status.UP, f"{ecosystem}-cli": Status.UP, f"{ecosystem}-8082": Status.DOWN,
        }
        assert ecosystem in await registry.services()
        async with registry.watch(ecosystem) as watch:
            first = await watch.next(timeout=10)
        assert first.ids() == set(every)

    spring = every[f"{ecosystem}-8080"]
    assert spring == Instance(
        ecosystem, f"{ecosystem}-8080", "127.0.0.1", 8080,
        labels={"version": "2", "blue": "", "secure": "false", "zone": "eu-1a", "group": "backend"},
        zone="eu-1a",
    )
    assert every[f"{ecosystem}-cli"].labels == {"cli": ""}
    assert (every[f"{ecosystem}-cli"].address, every[f"{ecosystem}-cli"].port) == ("127.0.0.1", 8081)


async def test_foreign_instances_sit_beside_ours_and_stay_out_of_scopes_and_namespaces(
    consul_server: ServerHandle, ecosystem: str
) -> None:
    ours = Instance(
        ecosystem, "ours-1", "127.0.0.1", 9000, labels={"app.kubernetes.io/name": "x"}, ports={"grpc": 9001}
    )
    async with AsyncRegistry.connect(consul_server.url) as registry:
        await registry.register(ours)
        every = {i.id: i for i in await registry.instances(ecosystem, statuses=None)}
        assert every["ours-1"] == ours  # our own records keep their lossless round trip
        assert len(every) == 4
        other_namespace = Instance(ecosystem, "ours-2", "127.0.0.1", 9002, namespace="staging")
        await registry.register(other_namespace)
        assert {i.id for i in await registry.instances(ecosystem, "staging", statuses=None)} == {"ours-2"}
        assert "ours-2" not in {i.id for i in await registry.instances(ecosystem, statuses=None)}
    async with AsyncRegistry.connect(f"{consul_server.url}/{unique('scope')}") as scoped:
        assert await scoped.instances(ecosystem, statuses=None) == ()
        assert ecosystem not in await scoped.services()


async def test_foreign_instances_are_read_only(consul_server: ServerHandle, ecosystem: str) -> None:
    backend = await started_backend(consul_server.url)
    try:
        assert isinstance(backend, ConsulBackend)
        (spring,) = [i for i in await backend.list("default", ecosystem) if i.id.endswith("-8080")]
        await backend.deregister(spring)  # not ours: nothing is removed
        assert spring.id in {i.id for i in await backend.list("default", ecosystem)}
    finally:
        await backend.close()


async def test_an_undecodable_entry_is_skipped_with_one_debug_line(
    consul_server: ServerHandle, ecosystem: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Port 0 (a plain definition without a port) cannot be an instance; the rest of the service still reads.
    put_json(consul_server, "/v1/agent/service/register", {"ID": f"{ecosystem}-noport", "Name": ecosystem})
    caplog.set_level(logging.DEBUG, logger="discovery.backends.consul")
    try:
        async with AsyncRegistry.connect(consul_server.url) as registry:
            for _ in range(3):
                assert len(await registry.instances(ecosystem, statuses=None)) == 3
    finally:
        http_json(consul_server.host, consul_server.port, f"/v1/agent/service/deregister/{ecosystem}-noport", "PUT")
    lines = [r for r in caplog.records if f"{ecosystem}-noport" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG, [r.getMessage() for r in lines]


async def test_ids_that_are_not_valid_instance_ids_are_escaped_reversibly(consul_server: ServerHandle) -> None:
    name = unique("legacy")
    service_id = f"{name}:10.0.0.7:8080"  # the old Spring Cloud Consul default shape <app>:<address>:<port>
    put_json(consul_server, "/v1/agent/service/register",
             {"ID": service_id, "Name": name, "Address": "127.0.0.1", "Port": 8080})
    try:
        async with AsyncRegistry.connect(consul_server.url) as registry:
            (instance,) = await registry.instances(name)
        assert instance.id == service_id.replace(":", "_x3a")
        assert foreign_key_of(instance.id) == service_id
    finally:
        http_json(consul_server.host, consul_server.port, f"/v1/agent/service/deregister/{service_id}", "PUT")


async def test_maintenance_and_warning(consul_server: ServerHandle, ecosystem: str) -> None:
    put_json(consul_server, f"/v1/agent/check/warn/service:{ecosystem}-8080", None)
    put_json(consul_server, f"/v1/agent/service/maintenance/{ecosystem}-cli?enable=true&reason=test", None)
    async with AsyncRegistry.connect(consul_server.url) as registry:
        every = {i.id: i.status for i in await registry.instances(ecosystem, statuses=None)}
    assert every == {
        f"{ecosystem}-8080": Status.UP,  # warning still takes traffic, as in Consul DNS
        f"{ecosystem}-cli": Status.DRAINING,
        f"{ecosystem}-8082": Status.DOWN,
    }


async def test_a_service_name_that_is_no_dns_label_is_not_listed(
    consul_server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"Legacy_{unique('api')}"
    put_json(consul_server, "/v1/agent/service/register", {"ID": name, "Name": name, "Port": 80})
    caplog.set_level(logging.DEBUG, logger="discovery.backends.consul")
    try:
        async with AsyncRegistry.connect(consul_server.url) as registry:
            assert name not in await registry.services()
            await registry.services()
    finally:
        http_json(consul_server.host, consul_server.port, f"/v1/agent/service/deregister/{name}", "PUT")
    assert len([r for r in caplog.records if name in r.getMessage()]) == 1
