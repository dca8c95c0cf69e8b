"""etcd over TLS with client certificates and RBAC: our role writes only its own prefix, others cannot touch it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from discovery import AsyncRegistry, Instance
from discovery.core.errors import AuthenticationError, DiscoveryTLSError, PermissionDeniedError
from discovery.core.plugins import create_backend
from discovery_etcd import EtcdBackend
from tests.harness.secure import ETCD_PREFIX, SecureServer

pytestmark = pytest.mark.servers


def prefix() -> str:
    return f"{ETCD_PREFIX}/{uuid.uuid4().hex[:10]}"


def url_for(server: SecureServer, path: str, role: str = "app", *, password: str | None = None) -> str:
    secret = password if password is not None else server.credentials[f"{role}_password"]
    return f"{server.base_url}{path}?ttl=2&timeout=3&{server.tls_query()}&username={role}&password={secret}"


async def test_registration_over_tls_with_rbac(secure_etcd: SecureServer) -> None:
    path = prefix()
    instance = Instance("orders", "orders-1", "10.0.0.1", 8080)
    async with await AsyncRegistry.connect(url_for(secure_etcd, path)) as registry:
        await registry.register(instance)
        async with registry.watch("orders") as watch:
            snapshot = await watch.until(lambda s: "orders-1" in s.ids(), timeout=5)
        assert [i.address for i in snapshot.instances] == ["10.0.0.1"]
        backend = registry.backend
        assert isinstance(backend, EtcdBackend)
        keys = await backend.pool.call("read keys", lambda client: client.get_prefix(f"{path}/".encode()))
        assert [kv.key.decode() for kv in keys] == [f"{path}/default/orders/orders-1"]


async def test_another_role_cannot_write_or_delete_our_keys(secure_etcd: SecureServer) -> None:
    path = prefix()
    key = f"{path}/default/orders/orders-1".encode()
    async with await AsyncRegistry.connect(url_for(secure_etcd, path)) as registry:
        await registry.register(Instance("orders", "orders-1", "10.0.0.1", 8080))
        rogue = create_backend(url_for(secure_etcd, path, "other"))
        assert isinstance(rogue, EtcdBackend)
        attacks: list[Any] = [
            lambda client: client.put(key, b'{"Addr": "6.6.6.6:1"}'),
            lambda client: client.delete(key),
            lambda client: client.delete_prefix(f"{path}/".encode()),
        ]
        try:
            for attack in attacks:
                with pytest.raises(PermissionDeniedError, match="etcd denied permission"):
                    await rogue.pool.call("attack", attack)
            with pytest.raises(PermissionDeniedError):
                await rogue.register(Instance("orders", "rogue", "6.6.6.6", 1), 2.0, lambda *_: None)
        finally:
            await rogue.close()
        assert [i.address for i in await registry.instances("orders")] == ["10.0.0.1"]


async def test_our_role_cannot_write_outside_its_prefix(secure_etcd: SecureServer) -> None:
    with pytest.raises(PermissionDeniedError):
        async with await AsyncRegistry.connect(url_for(secure_etcd, "/elsewhere")) as registry:
            await registry.register(Instance("orders", "orders-1", "10.0.0.1", 8080))


async def test_wrong_password_is_an_authentication_error(secure_etcd: SecureServer) -> None:
    with pytest.raises(AuthenticationError, match="etcd rejected the credentials") as caught:
        await asyncio.wait_for(AsyncRegistry.connect(url_for(secure_etcd, prefix(), password="wrong-pw-123")), 10)
    assert "wrong-pw-123" not in str(caught.value)


async def test_password_file(secure_etcd: SecureServer, tmp_path: Path) -> None:
    secret = tmp_path / "etcd-password"
    secret.write_text(secure_etcd.credentials["app_password"] + "\n")
    url = f"{secure_etcd.base_url}{prefix()}?ttl=2&{secure_etcd.tls_query()}&username=app&password_file={secret}"
    async with await AsyncRegistry.connect(url) as registry:
        await registry.register(Instance("files", "f-1", "10.0.0.3", 1))
        assert [i.id for i in await registry.instances("files")] == ["f-1"]


async def test_password_from_environment(secure_etcd: SecureServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOVERY_ETCD_PASSWORD", secure_etcd.credentials["app_password"])
    url = f"{secure_etcd.base_url}{prefix()}?ttl=2&{secure_etcd.tls_query()}&username=app"
    async with await AsyncRegistry.connect(url) as registry:
        assert await registry.instances("nothing") == ()


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("untrusted server", "server certificate not trusted"),
        ("rogue client certificate", "client certificate refused or missing"),
        ("no client certificate", "client certificate refused or missing"),
    ],
)
async def test_tls_failures_are_typed(secure_etcd: SecureServer, case: str, match: str) -> None:
    certs = secure_etcd.certs
    query = {
        "untrusted server": f"tls=true&ca={certs.rogue_ca}&cert={certs.client_cert}&key={certs.client_key}",
        "rogue client certificate": f"tls=true&ca={certs.ca}&cert={certs.rogue_cert}&key={certs.rogue_key}",
        "no client certificate": f"tls=true&ca={certs.ca}",
    }[case]
    password = secure_etcd.credentials["app_password"]
    url = f"{secure_etcd.base_url}{prefix()}?timeout=3&{query}&username=app&password={password}"
    with pytest.raises(DiscoveryTLSError, match=match):
        await asyncio.wait_for(AsyncRegistry.connect(url), 10)


async def test_registration_and_watch_log_in_again_after_an_etcd_restart(secure_etcd: SecureServer) -> None:
    # etcd forgets its auth tokens when it restarts; aetcd logs in once per connection, so the old client's token
    # is refused ("invalid auth token") and the connection layer must log in again with a new client.
    path = prefix()
    url = url_for(secure_etcd, path)
    async with await AsyncRegistry.connect(url) as owner, await AsyncRegistry.connect(url) as watcher:
        await owner.register(Instance("orders", "before", "10.0.0.1", 8080))
        async with watcher.watch("orders") as watch:
            await watch.until(lambda s: s.ids() == {"before"}, timeout=5)
            backend = owner.backend
            assert isinstance(backend, EtcdBackend)
            old_client = await backend.pool.client()
            await asyncio.to_thread(secure_etcd.handle.stop)
            await asyncio.to_thread(secure_etcd.handle.start)
            await owner.register(Instance("orders", "after", "10.0.0.2", 8080))
            assert await backend.pool.client() is not old_client, "a new client logged in"
            snapshot = await watch.until(lambda s: s.ids() == {"before", "after"} and not s.stale, timeout=15)
        assert {i.id for i in await watcher.instances("orders")} == {"before", "after"}
    assert snapshot.ids() == {"before", "after"}
