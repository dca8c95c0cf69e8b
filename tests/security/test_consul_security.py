"""Consul over HTTPS (our CA, client certificates) with ACLs default-deny: a token may touch only its services."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from discovery import AsyncRegistry, Instance
from discovery.core.errors import AuthenticationError, DiscoveryTLSError, PermissionDeniedError
from discovery.core.plugins import create_backend
from discovery_consul.backend import ConsulBackend
from tests.harness.secure import CONSUL_OTHER_SERVICE_PREFIX, CONSUL_SERVICE_PREFIX, SecureServer

pytestmark = pytest.mark.servers


def scope() -> str:
    return f"{CONSUL_SERVICE_PREFIX}{uuid.uuid4().hex[:8]}"


def service() -> str:
    return f"{CONSUL_SERVICE_PREFIX}orders-{uuid.uuid4().hex[:6]}"


def url_for(server: SecureServer, path: str, token: str | None, *, query: str | None = None) -> str:
    auth = f"&token={token}" if token else ""
    return f"{server.base_url}/{path}?ttl=2&timeout=3&{query or server.tls_query()}{auth}"


async def test_registration_over_https_with_acl_token(secure_consul: SecureServer) -> None:
    name = service()
    url = url_for(secure_consul, scope(), secure_consul.credentials["app_token"])
    async with await AsyncRegistry.connect(url) as r:
        await r.register(Instance(name, "o-1", "10.0.0.1", 8080))
        async with r.watch(name) as watch:
            snapshot = await watch.until(lambda s: "o-1" in s.ids(), timeout=5)
        assert [i.address for i in snapshot.instances] == ["10.0.0.1"]
        definitions = r.backend.definitions
        assert definitions is not None
        await definitions.put("service", "default", "web", b"{}")
        assert await definitions.get("service", "default", "web") == b"{}"


async def test_other_token_cannot_touch_our_services(secure_consul: SecureServer) -> None:
    name, path = service(), scope()
    instance = Instance(name, "o-1", "10.0.0.1", 8080)
    async with await AsyncRegistry.connect(url_for(secure_consul, path, secure_consul.credentials["app_token"])) as r:
        await r.register(instance)
        rogue = create_backend(url_for(secure_consul, path, secure_consul.credentials["other_token"]))
        assert isinstance(rogue, ConsulBackend)
        await rogue.start()
        try:
            with pytest.raises(PermissionDeniedError, match="Consul refused"):
                await rogue.register(instance, 2.0, lambda *_: None)  # taking our id over: the agent refuses
            await rogue.deregister(instance)  # not the rogue's registration: it removes nothing (ownership rule)
            with pytest.raises(PermissionDeniedError):
                await rogue.register(Instance(name, "rogue", "6.6.6.6", 1), 2.0, lambda *_: None)
            with pytest.raises(PermissionDeniedError):
                await rogue.definitions.put("service", "default", "web", b"{}")
        finally:
            await rogue.close()
        assert [i.address for i in await r.instances(name)] == ["10.0.0.1"]


async def test_our_token_cannot_register_other_services(secure_consul: SecureServer) -> None:
    url = url_for(secure_consul, scope(), secure_consul.credentials["app_token"])
    async with await AsyncRegistry.connect(url) as r:
        with pytest.raises(PermissionDeniedError):
            await r.register(Instance(f"{CONSUL_OTHER_SERVICE_PREFIX}x", "x-1", "10.0.0.1", 1))


async def test_unknown_token_is_an_authentication_error(secure_consul: SecureServer) -> None:
    bogus = str(uuid.uuid4())
    with pytest.raises(AuthenticationError, match="does not know the ACL token") as caught:
        await asyncio.wait_for(AsyncRegistry.connect(url_for(secure_consul, scope(), bogus)), 10)
    assert bogus not in str(caught.value)


async def test_no_token_is_denied_by_default(secure_consul: SecureServer) -> None:
    with pytest.raises(PermissionDeniedError):
        await asyncio.wait_for(AsyncRegistry.connect(url_for(secure_consul, scope(), None)), 10)


async def test_token_file(secure_consul: SecureServer, tmp_path: Path) -> None:
    secret = tmp_path / "consul-token"
    secret.write_text(secure_consul.credentials["app_token"] + "\n")
    query = f"{secure_consul.tls_query()}&token_file={secret}"
    async with await AsyncRegistry.connect(url_for(secure_consul, scope(), None, query=query)) as r:
        await r.register(Instance(service(), "o-1", "10.0.0.1", 8080))


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("untrusted server", "server certificate not trusted"),
        ("rogue client certificate", "client certificate refused or missing"),
        ("no client certificate", "client certificate refused or missing"),
    ],
)
async def test_tls_failures_are_typed(secure_consul: SecureServer, case: str, match: str) -> None:
    certs = secure_consul.certs
    query = {
        "untrusted server": f"tls=true&ca={certs.rogue_ca}&cert={certs.client_cert}&key={certs.client_key}",
        "rogue client certificate": f"tls=true&ca={certs.ca}&cert={certs.rogue_cert}&key={certs.rogue_key}",
        "no client certificate": f"tls=true&ca={certs.ca}",
    }[case]
    url = url_for(secure_consul, scope(), secure_consul.credentials["app_token"], query=query)
    with pytest.raises(DiscoveryTLSError, match=match):
        await asyncio.wait_for(AsyncRegistry.connect(url), 10)
