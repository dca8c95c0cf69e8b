"""etcd leases against a real server: sharing, external revocation, abort, failover, unreachable servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
import pytest_asyncio

from discovery.core.backend import RegistrationState
from discovery.core.errors import BackendUnavailableError, NotRegisteredError
from discovery.core.models import Instance
from discovery.core.urls import parse_url
from discovery.testing import Follower, eventually
from discovery_etcd import EtcdBackend
from tests.backends.etcd_support import raw_client, started_backend, unique_prefix
from tests.harness import ServerHandle, free_port

pytestmark = [pytest.mark.servers, pytest.mark.asyncio]

TTL = 2.0
CONVERGENCE = 15.0
T = TypeVar("T")


@pytest_asyncio.fixture
async def backends(etcd_server: ServerHandle) -> AsyncIterator[Callable[..., Awaitable[EtcdBackend]]]:
    prefix = unique_prefix()
    opened: list[EtcdBackend] = []

    async def open_one(endpoints: str | None = None) -> EtcdBackend:
        hosts = endpoints or f"{etcd_server.host}:{etcd_server.port}"
        backend = await started_backend(f"etcd://{hosts}{prefix}?ttl={TTL}&timeout=3")
        opened.append(backend)
        return backend

    yield open_one
    for backend in opened:
        await backend.close()


@pytest_asyncio.fixture
async def raw(etcd_server: ServerHandle) -> AsyncIterator[object]:
    client = raw_client(etcd_server.host, etcd_server.port)
    yield client
    await client.close()


def _async(read: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def probe() -> T:
        return read()

    return probe


def instance(service: str, number: int) -> Instance:
    return Instance(service, f"{service}-{number}", "127.0.0.1", 20000 + number)


async def test_registrations_with_one_ttl_share_one_lease(
    backends: Callable[..., Awaitable[EtcdBackend]], raw: object
) -> None:
    backend = await backends()
    states: list[RegistrationState] = []
    for n in range(3):
        await backend.register(instance("shared", n), TTL, lambda state, _reason=None: states.append(state))
    await backend.register(instance("shared", 9), 4.0, lambda state, _reason=None: states.append(state))
    leases = backend.lease_ids()
    assert set(leases) == {2, 4} and None not in leases.values()
    info = await raw.get_lease_info(leases[2], keys=True)  # type: ignore[attr-defined]
    expected = [backend.layout.instance_key("default", "shared", f"shared-{n}") for n in range(3)]
    assert sorted(info.keys) == sorted(expected)
    await backend.deregister(instance("shared", 9))
    assert set(backend.lease_ids()) == {2}
    assert states == []


async def test_stored_value_is_an_etcd_naming_endpoint(
    backends: Callable[..., Awaitable[EtcdBackend]], raw: object
) -> None:
    backend = await backends()
    await backend.register(instance("naming", 1), TTL, lambda *_: None)
    got = await raw.get(backend.layout.instance_key("default", "naming", "naming-1"))  # type: ignore[attr-defined]
    update = json.loads(got.value)
    assert (update["Op"], update["Addr"], update["Metadata"]["id"]) == (0, "127.0.0.1:20001", "naming-1")
    assert got.lease == backend.lease_ids()[2]


async def test_foreign_and_neighbouring_keys_never_leak(
    backends: Callable[..., Awaitable[EtcdBackend]], raw: object
) -> None:
    backend = await backends()
    await backend.register(instance("api", 1), TTL, lambda *_: None)
    await backend.register(instance("api-v2", 1), TTL, lambda *_: None)
    prefix = backend.layout.prefix
    await raw.put(f"{prefix}/default/api/garbage".encode(), b"\x00not json")  # type: ignore[attr-defined]
    await raw.put(f"{prefix}/default/api/deep/er".encode(), b'{"Op":0,"Addr":"127.0.0.1:1"}')  # type: ignore[attr-defined]
    await raw.put(f"{prefix}/default/api/plain-1".encode(), b'{"Op":0,"Addr":"127.0.0.1:7"}')  # type: ignore[attr-defined]
    # A deeper key is an endpoint of "api" for etcd's own naming clients too (they list <target>/ as a
    # prefix): read, with its id escaped reversibly ("deep/er" -> "deep_x2fer").
    assert [i.id for i in await backend.list("default", "api")] == ["api-1", "deep_x2fer", "plain-1"]
    assert await backend.services("default") == ("api", "api-v2")
    follower = Follower(backend.watch("default", "api"))
    try:
        first = await follower.until(lambda s: True, CONVERGENCE)
        assert first.ids() == {"api-1", "deep_x2fer", "plain-1"}
        await backend.register(instance("api-v2", 2), TTL, lambda *_: None)
        await backend.register(instance("api", 2), TTL, lambda *_: None)
        latest = await follower.until(lambda s: "api-2" in s.ids(), CONVERGENCE)
        assert latest.ids() == {"api-1", "api-2", "deep_x2fer", "plain-1"}
        assert all(s.ids() <= {"api-1", "api-2", "deep_x2fer", "plain-1"} for s in follower.seen)
    finally:
        await follower.close()
        await raw.delete_prefix(f"{prefix}/".encode())  # type: ignore[attr-defined]


async def test_lease_revoked_from_outside_is_restored_and_watchers_converge(
    backends: Callable[..., Awaitable[EtcdBackend]], raw: object
) -> None:
    registrant, observer = await backends(), await backends()
    states: list[RegistrationState] = []
    for n in (1, 2):
        await registrant.register(instance("revoked", n), TTL, lambda state, _reason=None: states.append(state))
    follower = Follower(observer.watch("default", "revoked"))
    try:
        await follower.until(lambda s: s.ids() == {"revoked-1", "revoked-2"}, CONVERGENCE)
        old_lease = registrant.lease_ids()[2]
        await raw.revoke_lease(old_lease)  # type: ignore[attr-defined]
        await follower.until(lambda s: not s.ids(), CONVERGENCE)
        bound = registrant.detection_bound(TTL)
        back = await follower.until(lambda s: s.ids() == {"revoked-1", "revoked-2"}, bound + 1.0)
        assert all(len(s) in (0, 2) for s in follower.seen), "keys leave and come back together (one transaction)"
        assert back.ids() == {"revoked-1", "revoked-2"}
        expected = [RegistrationState.LOST] * 2 + [RegistrationState.RESTORED] * 2
        await eventually(_async(lambda: list(states)), lambda seen: seen == expected, CONVERGENCE)
        new_lease = registrant.lease_ids()[2]
        assert new_lease not in (None, old_lease)
        info = await raw.get_lease_info(new_lease, keys=True)  # type: ignore[attr-defined]
        assert len(info.keys) == 2 and info.TTL > 0
    finally:
        await follower.close()


async def test_abort_stops_keepalive_without_revoking(
    backends: Callable[..., Awaitable[EtcdBackend]], raw: object
) -> None:
    doomed, observer = await backends(), await backends()
    await doomed.register(instance("aborted", 1), TTL, lambda *_: None)
    lease = doomed.lease_ids()[2]
    assert lease is not None
    await doomed.abort()
    info = await raw.get_lease_info(lease, keys=True)  # type: ignore[attr-defined]
    assert info.TTL > 0 and len(info.keys) == 1, "abort must leave the lease to expire, not revoke it"
    bound = observer.detection_bound(TTL)
    await eventually(lambda: observer.list("default", "aborted"), lambda found: found == (), bound + 1.0)


async def test_close_deregisters_everything(backends: Callable[..., Awaitable[EtcdBackend]], raw: object) -> None:
    closing, observer = await backends(), await backends()
    await closing.register(instance("closing", 1), TTL, lambda *_: None)
    await closing.register(instance("closing", 2), 5.0, lambda *_: None)
    await closing.close()
    assert await observer.list("default", "closing") == ()


async def test_failover_to_the_next_endpoint(
    backends: Callable[..., Awaitable[EtcdBackend]], etcd_server: ServerHandle
) -> None:
    backend = await backends(f"127.0.0.1:{free_port()},{etcd_server.host}:{etcd_server.port}")
    await backend.register(instance("failover", 1), TTL, lambda *_: None)
    assert [i.id for i in await backend.list("default", "failover")] == ["failover-1"]


async def test_unreachable_server_is_backend_unavailable() -> None:
    backend = EtcdBackend.from_url(parse_url(f"etcd://127.0.0.1:{free_port()}?timeout=0.5"))
    with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1"):
        await backend.start()
    await backend.abort()


async def test_concurrent_puts_on_a_revoked_lease_all_end_on_one_new_lease(
    backends: Callable[..., Awaitable[EtcdBackend]], raw: object
) -> None:
    # Puts of one TTL run concurrently (the group lock covers only the lease id): every one that finds the lease
    # gone must end on the single re-granted lease, none on the dead one.
    backend = await backends()
    for n in (0, 1):
        await backend.register(instance("concurrent", n), TTL, lambda *_: None)
    old_lease = backend.lease_ids()[2]
    await raw.revoke_lease(old_lease)  # type: ignore[attr-defined]
    await asyncio.gather(*(backend.register(instance("concurrent", n), TTL, lambda *_: None) for n in range(2, 22)))
    new_lease = backend.lease_ids()[2]
    assert new_lease not in (None, old_lease)
    info = await raw.get_lease_info(new_lease, keys=True)  # type: ignore[attr-defined]
    expected = {backend.layout.instance_key("default", "concurrent", f"concurrent-{n}") for n in range(22)}
    assert set(info.keys) == expected


async def test_update_racing_deregister_of_one_key_leaves_nothing_behind(
    backends: Callable[..., Awaitable[EtcdBackend]], raw: object
) -> None:
    backend = await backends()
    members = [instance("racing", n) for n in range(16)]
    for member in members:
        await backend.register(member, TTL, lambda *_: None)
    lease = backend.lease_ids()[2]
    outcomes = await asyncio.gather(
        *(op for member in members for op in (backend.update(member), backend.deregister(member))),
        return_exceptions=True,
    )
    assert all(outcome is None or isinstance(outcome, NotRegisteredError) for outcome in outcomes), outcomes
    assert backend.lease_ids() == {}
    assert await backend.list("default", "racing") == ()
    info = await raw.get_lease_info(lease, keys=True)  # type: ignore[attr-defined]
    assert info.TTL == -1, "the emptied group's lease was revoked"
