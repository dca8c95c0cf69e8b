"""ZooKeeper over TLS (secureClientPort, client certificates) with digest auth and ACLs on every znode we create."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE, Permissions

from discovery import AsyncRegistry, Instance
from discovery.core.errors import AuthenticationError, DiscoveryTLSError, PermissionDeniedError
from tests.harness.secure import SecureServer

pytestmark = pytest.mark.servers

USER = "app"
PASSWORD = "zk-app-password-5b1c"
FAST = "session_timeout=2&connect_timeout=5"


def secure_url(server: SecureServer, root: str, *, auth: str | None = None, extra: str = "") -> str:
    credentials = f"&username={USER}&password={PASSWORD}" if auth is None else auth
    return f"{server.base_url}/{root}?{FAST}&{server.tls_query()}{credentials}{extra}"


def new_root() -> str:
    return f"sec-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def outsider(secure_zookeeper: SecureServer) -> Iterator[KazooClient]:
    """A client of the plain port with another identity: what a rogue writer could do."""
    client = KazooClient(hosts=f"127.0.0.1:{secure_zookeeper.plain_port}", auth_data=[("digest", "mallory:evil")])
    client.start(timeout=10)
    try:
        yield client
    finally:
        client.stop()
        client.close()


async def test_registration_over_tls_is_protected(secure_zookeeper: SecureServer, outsider: KazooClient) -> None:
    root = new_root()
    instance = Instance("orders", "orders-1", "10.0.0.1", 8080)
    async with await AsyncRegistry.connect(secure_url(secure_zookeeper, root)) as registry:
        await registry.register(instance)
        assert [i.id for i in await registry.instances("orders")] == ["orders-1"]
        path = f"/{root}/default/orders/orders-1"

        # world read: an unauthenticated discoverer still sees the record
        data, _ = await asyncio.to_thread(outsider.get, path)
        assert b"10.0.0.1" in data

        # ...but cannot delete it, rewrite it, add a fake sibling or remove the directories
        attacks = [
            lambda: outsider.delete(path),
            lambda: outsider.set(path, b'{"address": "6.6.6.6"}'),
            lambda: outsider.create(f"/{root}/default/orders/rogue", b"{}"),
            lambda: outsider.delete(f"/{root}/default/orders", recursive=True),
            lambda: outsider.set_acls(f"/{root}", OPEN_ACL_UNSAFE),
        ]
        for attack in attacks:
            with pytest.raises(NoAuthError):
                await asyncio.to_thread(attack)
        assert [i.address for i in await registry.instances("orders")] == ["10.0.0.1"]

        for node in (f"/{root}", f"/{root}/default", f"/{root}/default/orders", path):
            acls, _ = await asyncio.to_thread(outsider.get_acls, node)
            assert {(acl.id.scheme, acl.id.id.split(":")[0], acl.perms) for acl in acls} == {
                ("digest", USER, Permissions.ALL),
                ("world", "anyone", Permissions.READ),
            }, node


async def test_definitions_get_the_acl_too(secure_zookeeper: SecureServer, outsider: KazooClient) -> None:
    root = new_root()
    async with await AsyncRegistry.connect(secure_url(secure_zookeeper, root)) as registry:
        definitions = registry.backend.definitions
        assert definitions is not None
        await definitions.put("service", "default", "web", b"{}")
        acls, _ = await asyncio.to_thread(outsider.get_acls, f"/{root}/_definitions/service/default/web")
        expected = {("digest", Permissions.ALL), ("world", Permissions.READ)}
        assert {(acl.id.scheme, acl.perms) for acl in acls} == expected
        with pytest.raises(NoAuthError):
            await asyncio.to_thread(outsider.set, f"/{root}/_definitions/service/default/web", b"{}")


async def test_read_creator_hides_records_from_others(secure_zookeeper: SecureServer, outsider: KazooClient) -> None:
    root = new_root()
    async with await AsyncRegistry.connect(secure_url(secure_zookeeper, root, extra="&read=creator")) as registry:
        await registry.register(Instance("billing", "b-1", "10.0.0.2", 9000))
        with pytest.raises(NoAuthError):
            await asyncio.to_thread(outsider.get, f"/{root}/default/billing/b-1")
        with pytest.raises(NoAuthError):
            await asyncio.to_thread(outsider.get_children, f"/{root}")
        assert [i.id for i in await registry.instances("billing")] == ["b-1"]


async def test_password_file(secure_zookeeper: SecureServer, tmp_path: Path) -> None:
    secret = tmp_path / "zk-password"
    secret.write_text(PASSWORD + "\n")
    root = new_root()
    async with await AsyncRegistry.connect(secure_url(secure_zookeeper, root)) as first:
        await first.register(Instance("files", "f-1", "10.0.0.3", 1))
        auth = f"&username={USER}&password_file={secret}"
        async with await AsyncRegistry.connect(secure_url(secure_zookeeper, root, auth=auth)) as second:
            assert [i.id for i in await second.instances("files")] == ["f-1"]


async def test_wrong_password_is_an_authentication_error(secure_zookeeper: SecureServer) -> None:
    root = new_root()
    async with await AsyncRegistry.connect(secure_url(secure_zookeeper, root)):
        wrong = f"&username={USER}&password=not-the-password"
        with pytest.raises(AuthenticationError, match="wrong password") as caught:
            await AsyncRegistry.connect(secure_url(secure_zookeeper, root, auth=wrong))
        assert "not-the-password" not in str(caught.value)


async def test_another_user_is_denied(secure_zookeeper: SecureServer) -> None:
    root = new_root()
    async with await AsyncRegistry.connect(secure_url(secure_zookeeper, root)):
        other = "&username=mallory&password=evil"
        with pytest.raises(PermissionDeniedError, match="mallory"):
            await AsyncRegistry.connect(secure_url(secure_zookeeper, root, auth=other))


async def test_root_others_can_write_is_refused(secure_zookeeper: SecureServer, outsider: KazooClient) -> None:
    root = new_root()
    await asyncio.to_thread(outsider.create, f"/{root}", b"", acl=OPEN_ACL_UNSAFE)
    with pytest.raises(PermissionDeniedError, match="could be tampered with"):
        await AsyncRegistry.connect(secure_url(secure_zookeeper, root))


@pytest.mark.parametrize(
    ("ca", "cert", "match"),
    [
        ("rogue_ca", "client", "server certificate not trusted"),
        ("ca", "rogue", "client certificate refused or missing"),
        ("ca", None, "client certificate refused or missing"),
    ],
)
async def test_tls_failures_are_typed(secure_zookeeper: SecureServer, ca: str, cert: str | None, match: str) -> None:
    certs = secure_zookeeper.certs
    query = f"tls=true&ca={getattr(certs, ca)}"
    if cert == "client":
        query += f"&cert={certs.client_cert}&key={certs.client_key}"
    elif cert == "rogue":
        query += f"&cert={certs.rogue_cert}&key={certs.rogue_key}"
    url = f"{secure_zookeeper.base_url}/{new_root()}?{FAST}&{query}"
    with pytest.raises(DiscoveryTLSError, match=match):
        await asyncio.wait_for(AsyncRegistry.connect(url), 15)


async def test_tls_to_the_plain_port_is_a_tls_error(secure_zookeeper: SecureServer) -> None:
    url = f"zookeeper://127.0.0.1:{secure_zookeeper.plain_port}/{new_root()}?{FAST}&{secure_zookeeper.tls_query()}"
    with pytest.raises(DiscoveryTLSError, match="is it a TLS port"):
        await asyncio.wait_for(AsyncRegistry.connect(url), 15)
