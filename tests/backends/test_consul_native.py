"""The Consul backend against a real agent: what Consul's own tools see, liveness, self-healing, maintenance."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from discovery.core.backend import Backend, RegistrationState
from discovery.core.errors import BackendUnavailableError
from discovery.core.models import Instance, Status
from discovery.core.urls import parse_url
from discovery.testing import Follower, eventually
from discovery.testing.conformance import CONVERGENCE_TIMEOUT, SCHEDULING_ALLOWANCE
from discovery_consul import ConsulBackend, layout
from tests.backends.consul_support import (
    StateLog,
    dns_answers,
    http_json,
    srv_ports,
    started_backend,
    unique,
)
from tests.harness import ServerHandle, free_port

pytestmark = pytest.mark.servers

SHORT_TTL = 2.0


@pytest.fixture
def scoped_url(consul_server: ServerHandle) -> str:
    return f"{consul_server.url}/native-{uuid.uuid4().hex}"


@pytest_asyncio.fixture
async def backends(scoped_url: str) -> AsyncIterator[Callable[..., asyncio.Future[Backend]]]:
    opened: list[Backend] = []

    async def open_one(url: str = scoped_url) -> Backend:
        backend = await started_backend(url)
        opened.append(backend)
        return backend

    yield open_one  # type: ignore[misc]
    for backend in opened:
        await backend.close()


def ignore_state(state: RegistrationState, reason: object = None) -> None:
    """An ``on_state`` listener for registrations whose state the test does not follow."""


async def test_registered_instances_answer_consul_dns_and_the_catalog_cli(
    consul_server: ServerHandle, backends: Callable[..., asyncio.Future[Backend]]
) -> None:
    if "dns" not in consul_server.ports:
        pytest.skip("the external Consul has no DNS port configured (DISCOVERY_TEST_CONSUL_DNS_PORT)")
    host, dns_port = consul_server.host, consul_server.ports["dns"]
    backend = await backends()
    service = unique("dns")
    plain = Instance(service, "d1", "127.0.0.11", 7001)
    other = Instance(service, "t1", "127.0.0.12", 7002, namespace="team-x")
    await backend.register(plain, SHORT_TTL, ignore_state)
    await backend.register(other, SHORT_TTL, ignore_state)

    async def srv(name: str) -> set[int]:
        return await asyncio.to_thread(srv_ports, host, dns_port, name)

    await eventually(lambda: srv(f"{service}.service.consul"), lambda ports: ports == {7001, 7002}, CONVERGENCE_TIMEOUT)
    assert await srv(f"default.{service}.service.consul") == {7001}
    assert await srv(f"team-x.{service}.service.consul") == {7002}
    a_records = await asyncio.to_thread(dns_answers, host, dns_port, f"team-x.{service}.service.consul", "A")
    assert a_records == ["127.0.0.12"]

    env = {**os.environ, "CONSUL_HTTP_ADDR": f"{host}:{consul_server.port}"}
    listing = subprocess.run(
        ["consul", "catalog", "services", "-tags"], env=env, capture_output=True, text=True, timeout=30, check=True
    ).stdout
    line = next(row for row in listing.splitlines() if row.split()[:1] == [service])
    assert "default" in line and "team-x" in line

    # A DOWN instance fails its status check: Consul DNS stops answering for it, but it stays registered.
    await backend.update(plain.with_changes(status=Status.DOWN))
    await eventually(lambda: srv(f"{service}.service.consul"), lambda ports: ports == {7002}, CONVERGENCE_TIMEOUT)
    assert [i.status for i in await backend.list("default", service)] == [Status.DOWN]
    passing = http_json(host, consul_server.port, f"/v1/health/service/{service}?passing=1&tag=default")
    assert passing == []


async def test_default_namespace_never_sees_other_namespaces(backends: Callable[..., asyncio.Future[Backend]]) -> None:
    backend = await backends()
    service = unique("iso")
    await backend.register(Instance(service, "a", "127.0.0.1", 1, namespace="team-a"), SHORT_TTL, ignore_state)
    assert await backend.list("default", service) == ()
    assert service not in await backend.services("default")
    assert await backend.services("team-a") == (service,)


async def test_heartbeat_stopped_leaves_watchers_within_bound(
    consul_server: ServerHandle, backends: Callable[..., asyncio.Future[Backend]]
) -> None:
    watcher, doomed = await backends(), await backends()
    service = unique("abort")
    survivor, victim = Instance(service, "s", "127.0.0.1", 1), Instance(service, "v", "127.0.0.1", 2)
    await watcher.register(survivor, 10.0, ignore_state)
    await doomed.register(victim, SHORT_TTL, ignore_state)
    follower = Follower(watcher.watch("default", service))
    try:
        await follower.until(lambda s: s.ids() == {"s", "v"}, CONVERGENCE_TIMEOUT)
        started = time.monotonic()
        await doomed.abort()
        bound = doomed.detection_bound(SHORT_TTL)
        await follower.until(lambda s: s.ids() == {"s"}, bound + SCHEDULING_ALLOWANCE)
        elapsed = time.monotonic() - started
    finally:
        await follower.close()
    assert elapsed <= bound + SCHEDULING_ALLOWANCE
    # abort() does not deregister: the entry is still in the catalog, critical, until Consul reaps it.
    entries = http_json(consul_server.host, consul_server.port, f"/v1/health/service/{service}")
    victim_id = layout.consul_service_id(victim, watcher.settings.scope)  # type: ignore[attr-defined]
    victim_checks = [e["Checks"] for e in entries if e["Service"]["ID"] == victim_id]
    assert victim_checks, "abort() must leave the registration for Consul to reap"
    owner = doomed.owner_mark  # type: ignore[attr-defined]
    liveness = {c["CheckID"]: c["Status"] for c in victim_checks[0]}[layout.liveness_check_id(victim_id, owner)]
    assert liveness == "critical"


async def test_killed_registrant_process_leaves_within_bound(
    consul_server: ServerHandle, backends: Callable[..., asyncio.Future[Backend]], scoped_url: str
) -> None:
    watcher = await backends()
    service = unique("killed")
    process = subprocess.Popen(
        [sys.executable, "-m", "discovery.testing.registrant", scoped_url, "default", service, "2", str(SHORT_TTL)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    follower = Follower(watcher.watch("default", service))
    try:
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)  # type: ignore[union-attr]
        assert line.startswith("READY"), f"registrant failed: {line!r}"
        ids = set(line.split()[1:])
        await follower.until(lambda s: s.ids() == ids, CONVERGENCE_TIMEOUT)
        started = time.monotonic()
        os.kill(process.pid, signal.SIGKILL)
        bound = watcher.detection_bound(SHORT_TTL)
        await follower.until(lambda s: not s.ids(), bound + SCHEDULING_ALLOWANCE)
        elapsed = time.monotonic() - started
    finally:
        await follower.close()
        process.kill()
        process.wait()
    assert elapsed <= bound + SCHEDULING_ALLOWANCE
    assert await watcher.list("default", service) == ()
    if "dns" in consul_server.ports:
        assert await asyncio.to_thread(srv_ports, consul_server.host, consul_server.ports["dns"],
                                       f"{service}.service.consul") == set()


async def test_maintenance_mode_is_draining_both_ways(
    consul_server: ServerHandle, backends: Callable[..., asyncio.Future[Backend]]
) -> None:
    owner, watcher = await backends(), await backends()
    service = unique("maint")
    instance = Instance(service, "m1", "127.0.0.1", 1)
    await owner.register(instance, SHORT_TTL, ignore_state)
    service_id = layout.consul_service_id(instance, owner.settings.scope)  # type: ignore[attr-defined]
    host, port = consul_server.host, consul_server.port
    env = {**os.environ, "CONSUL_HTTP_ADDR": f"{host}:{port}"}

    def consul_maint(flag: str) -> None:
        subprocess.run(["consul", "maint", flag, "-service", service_id], env=env, check=True, capture_output=True,
                       timeout=30)

    follower = Follower(watcher.watch("default", service))
    try:
        await follower.until(lambda s: [i.status for i in s] == [Status.UP], CONVERGENCE_TIMEOUT)
        # Consul's tool → our status.
        await asyncio.to_thread(consul_maint, "-enable")
        await follower.until(lambda s: [i.status for i in s] == [Status.DRAINING], CONVERGENCE_TIMEOUT)
        await asyncio.to_thread(consul_maint, "-disable")
        await follower.until(lambda s: [i.status for i in s] == [Status.UP], CONVERGENCE_TIMEOUT)
        # Our status → Consul's maintenance mode.
        await owner.update(instance.with_changes(status=Status.DRAINING))
        await follower.until(lambda s: [i.status for i in s] == [Status.DRAINING], CONVERGENCE_TIMEOUT)
        checks = http_json(host, port, "/v1/agent/checks")
        assert checks[layout.maintenance_check_id(service_id)]["Status"] == "critical"
        # A label change while DRAINING keeps maintenance mode: no UP in between.
        await owner.update(instance.with_changes(status=Status.DRAINING, labels={"v": "2"}))
        await follower.until(lambda s: [i.labels.get("v") for i in s] == ["2"], CONVERGENCE_TIMEOUT)
        await owner.update(instance)
        await follower.until(lambda s: [i.status for i in s] == [Status.UP], CONVERGENCE_TIMEOUT)
    finally:
        await follower.close()
    assert layout.maintenance_check_id(service_id) not in http_json(host, port, "/v1/agent/checks")
    # Every snapshot between "DRAINING with the new label" and the final update shows DRAINING.
    relabelled = [i for s in follower.seen for i in s if i.labels.get("v") == "2"]
    assert relabelled and all(i.status is Status.DRAINING for i in relabelled)


async def test_foreign_registrations_are_read_only_instances_of_an_unscoped_default_namespace(
    consul_server: ServerHandle, backends: Callable[..., asyncio.Future[Backend]]
) -> None:
    backend = await backends(consul_server.url)
    scoped = await backends(f"{consul_server.url}/{unique('scope')}")
    service = unique("foreign")
    request_env = {**os.environ, "CONSUL_HTTP_ADDR": f"{consul_server.host}:{consul_server.port}"}
    subprocess.run(["consul", "services", "register", f"-name={service}", f"-id={service}-x", "-port=9",
                    "-tag=default"], env=request_env, check=True, capture_output=True, timeout=30)
    try:
        ours = Instance(service, "ours", "127.0.0.1", 10)
        await backend.register(ours, SHORT_TTL, ignore_state)
        # The foreign one (tagged "default" by chance, no discovery Meta) is read beside ours, never as ours.
        foreign = Instance(service, f"{service}-x", "127.0.0.1", 9, labels={"default": ""})
        assert set(await backend.list("default", service)) == {ours, foreign}
        assert await backend.list("other", service) == ()
        assert await scoped.list("default", service) == ()
    finally:
        subprocess.run(["consul", "services", "deregister", f"-id={service}-x"], env=request_env, check=True,
                       capture_output=True, timeout=30)


async def test_agent_restart_with_state_loss_is_restored(fresh_server: Callable[[str], ServerHandle]) -> None:
    server = fresh_server("consul")
    owner = await started_backend(server.url)
    watcher = await started_backend(server.url)
    try:
        service = unique("restart")
        instance = Instance(service, "r1", "127.0.0.1", 1, labels={"app": "x"})
        log = StateLog()
        await owner.register(instance, SHORT_TTL, log)
        follower = Follower(watcher.watch("default", service))
        try:
            await follower.until(lambda s: s.ids() == {"r1"}, CONVERGENCE_TIMEOUT)
            await asyncio.to_thread(server.stop)
            stale = await follower.until(lambda s: s.stale, CONVERGENCE_TIMEOUT)
            assert stale.ids() == {"r1"}, "an outage keeps the last set, marked stale"
            await asyncio.to_thread(server.start)
            back = time.monotonic()
            fresh = await follower.until(lambda s: not s.stale and s.ids() == {"r1"}, CONVERGENCE_TIMEOUT)
        finally:
            await follower.close()
        await eventually(lambda: asyncio.sleep(0, log.states), lambda s: len(s) >= 2, CONVERGENCE_TIMEOUT)
        assert log.states[:2] == [RegistrationState.LOST, RegistrationState.RESTORED]
        assert log.times[1] - back <= SHORT_TTL + SCHEDULING_ALLOWANCE
        assert fresh.get("r1") == instance
        assert await watcher.list("default", service) == (instance,)
    finally:
        await owner.close()
        await watcher.close()


async def test_unreachable_agent_is_backend_unavailable() -> None:
    backend = ConsulBackend.from_url(parse_url(f"consul://127.0.0.1:{free_port()}?timeout=1"))
    with pytest.raises(BackendUnavailableError):
        await backend.start()


@pytest.mark.parametrize("status", [Status.UP, Status.DOWN, Status.STARTING])
async def test_first_registration_sets_its_checks_in_its_one_call(
    consul_server: ServerHandle, backends: Callable[..., asyncio.Future[Backend]], status: Status
) -> None:
    # No follow-up TTL update: the checks are born with their statuses, and a list right after sees them. An UP
    # instance has the liveness check only (the agent's work per write grows with every check it holds).
    owner = await backends()
    instance = Instance(unique("onecall"), "o1", "127.0.0.1", 1, status=status)
    await owner.register(instance, SHORT_TTL, ignore_state)
    service_id = layout.consul_service_id(instance, owner.settings.scope)  # type: ignore[attr-defined]
    checks = http_json(consul_server.host, consul_server.port, "/v1/agent/checks")
    owner_mark = owner.owner_mark  # type: ignore[attr-defined]
    assert checks[layout.liveness_check_id(service_id, owner_mark)]["Status"] == "passing"
    ours = {check_id for check_id, check in checks.items() if check.get("ServiceID") == service_id}
    if status is Status.UP:
        assert ours == {layout.liveness_check_id(service_id, owner_mark)}
    else:
        assert checks[layout.status_check_id(service_id, owner_mark)]["Status"] == "critical"
    assert [i.status for i in await owner.list("default", instance.service)] == [status]


async def test_an_up_registration_without_a_status_check_can_still_be_set_down_starting_and_up(
    consul_server: ServerHandle, backends: Callable[..., asyncio.Future[Backend]]
) -> None:
    # An UP registration holds no status check; set_status (the operator's, from another process) adds it for
    # DOWN/STARTING, and the owner, once it adopted that status, sets it through the check its update finds.
    owner, operator = await backends(), await backends()
    instance = Instance(unique("nostatus"), "n1", "127.0.0.1", 1)
    await owner.register(instance, SHORT_TTL, ignore_state)
    service_id = layout.consul_service_id(instance, owner.settings.scope)  # type: ignore[attr-defined]
    status_check = layout.status_check_id(service_id, owner.owner_mark)  # type: ignore[attr-defined]
    assert status_check not in http_json(consul_server.host, consul_server.port, "/v1/agent/checks")

    def statuses() -> asyncio.Future[list[Status]]:
        async def read() -> list[Status]:
            return [i.status for i in await operator.list("default", instance.service)]
        return asyncio.ensure_future(read())

    # From UP each time: a change between two failing statuses changes only the check's output, which the agent
    # syncs to the catalog within check_update_interval (5 min by default), not at once.
    for status in (Status.STARTING, Status.UP, Status.DOWN, Status.UP):
        await operator.set_status("default", instance.service, "n1", status)
        await eventually(statuses, lambda found, status=status: found == [status], CONVERGENCE_TIMEOUT)
    await operator.set_status("default", instance.service, "n1", Status.DOWN)
    owner.adopt(instance.with_changes(status=Status.DOWN))
    await owner.update(instance.with_changes(labels={"v": "2"}))  # the owner sets UP again, with new labels
    await eventually(
        lambda: operator.list("default", instance.service),
        lambda found: [(i.status, dict(i.labels)) for i in found] == [(Status.UP, {"v": "2"})],
        CONVERGENCE_TIMEOUT,
    )


async def test_the_owner_switching_between_failing_statuses_shows_at_once(
    backends: Callable[..., asyncio.Future[Backend]],
) -> None:
    # STARTING -> DOWN changes only the status check's output, which the agent syncs within check_update_interval
    # (5 min): the service's Meta, synced with the write, names the status (before: STARTING for minutes).
    owner, observer = await backends(), await backends()
    instance = Instance(unique("failing"), "f1", "127.0.0.1", 1, status=Status.DOWN)
    await owner.register(instance, SHORT_TTL, ignore_state)
    service = instance.service
    for status in (Status.STARTING, Status.DOWN, Status.UP, Status.STARTING, Status.DOWN):
        await owner.update(instance.with_changes(status=status))
        await eventually(
            lambda: observer.list("default", service),
            lambda found, status=status: [i.status for i in found] == [status],  # type: ignore[misc]
            CONVERGENCE_TIMEOUT,
        )


async def test_registration_over_a_leftover_of_an_earlier_process_sets_its_statuses(
    backends: Callable[..., asyncio.Future[Backend]],
) -> None:
    # Consul keeps an existing check's status when a service is registered again: a leftover DOWN registration
    # with a critical liveness check (its process died) must not make the new UP registration DOWN or invisible.
    earlier, observer = await backends(), await backends()
    instance = Instance(unique("leftover"), "l1", "127.0.0.1", 1)
    await earlier.register(instance.with_changes(status=Status.DOWN), SHORT_TTL, ignore_state)
    await earlier.abort()
    await eventually(
        lambda: observer.list("default", instance.service), lambda found: found == (), CONVERGENCE_TIMEOUT
    )
    later = await backends()
    await later.register(instance, SHORT_TTL, ignore_state)
    assert [i.status for i in await observer.list("default", instance.service)] == [Status.UP]
