"""TLS, mTLS and the shared token, with gRPC's own xDS client reading its channel and call credentials from
the bootstrap: the expected client gets the registry's addresses, every other one gets nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from discovery import AsyncRegistry, ConfigurationError, Instance
from discovery.xds import ServerTLS, XdsServer, make_token
from tests.harness.secure import Certificates, make_certificates
from tests.xds.support import EchoServer, XdsClientProcess, client_bootstrap

pytestmark = pytest.mark.timeout(120)
REFUSED_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("xds-pki"))


@pytest.fixture
async def echo(memory_registry: AsyncRegistry, echo_servers: Callable[..., list[EchoServer]]) -> EchoServer:
    (server,) = echo_servers(1)
    await memory_registry.register(Instance("orders", server.name, "127.0.0.1", server.port))
    return server


async def reaches(client: XdsClientProcess, echo: EchoServer) -> bool:
    result = await client.call("xds:///orders", 2, timeout=REFUSED_TIMEOUT)
    return result["counts"] == {echo.name: 2}


async def test_tls(memory_registry: AsyncRegistry, echo: EchoServer, certs: Certificates,
                   xds_clients: Callable[..., XdsClientProcess]) -> None:
    async with XdsServer(memory_registry, tls=ServerTLS(str(certs.server_cert), str(certs.server_key))) as server:
        assert await reaches(xds_clients(client_bootstrap(server.address, ca=certs.ca)), echo)
        # a client that does not trust the server's CA gets nothing
        assert not await reaches(xds_clients(client_bootstrap(server.address, ca=certs.rogue_ca)), echo)
        # nor does a plain-text client
        assert not await reaches(xds_clients(client_bootstrap(server.address)), echo)


async def test_client_certificates(memory_registry: AsyncRegistry, echo: EchoServer, certs: Certificates,
                                   xds_clients: Callable[..., XdsClientProcess]) -> None:
    tls = ServerTLS(str(certs.server_cert), str(certs.server_key), client_ca=str(certs.ca))
    async with XdsServer(memory_registry, tls=tls) as server:
        good = client_bootstrap(server.address, ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
        assert await reaches(xds_clients(good), echo)
        rogue = client_bootstrap(server.address, ca=certs.ca, cert=certs.rogue_cert, key=certs.rogue_key)
        assert not await reaches(xds_clients(rogue), echo)
        assert not await reaches(xds_clients(client_bootstrap(server.address, ca=certs.ca)), echo)
        assert len(server.streams) == 1  # only the good client's stream was ever opened


async def test_shared_token(memory_registry: AsyncRegistry, echo: EchoServer, certs: Certificates, tmp_path: Path,
                            xds_clients: Callable[..., XdsClientProcess], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = make_token()
    good, wrong = tmp_path / "good.token", tmp_path / "wrong.token"
    good.write_text(token)
    wrong.write_text(make_token())
    tls = ServerTLS(str(certs.server_cert), str(certs.server_key))
    async with XdsServer(memory_registry, tls=tls, token=token) as server:
        assert await reaches(xds_clients(client_bootstrap(server.address, ca=certs.ca, token_file=good)), echo)
        assert not await reaches(xds_clients(client_bootstrap(server.address, ca=certs.ca, token_file=wrong)), echo)
        assert not await reaches(xds_clients(client_bootstrap(server.address, ca=certs.ca)), echo)
        assert len(server.streams) == 1
    assert any("missing or wrong token" in r.getMessage() for r in caplog.records)
    assert not any(token in r.getMessage() for r in caplog.records)


async def test_a_token_needs_tls(memory_registry: AsyncRegistry) -> None:
    with pytest.raises(ConfigurationError, match="needs TLS") as caught:
        XdsServer(memory_registry, token="s3cret-value")
    assert "s3cret-value" not in str(caught.value)


async def test_unreadable_certificate_is_a_configuration_error(memory_registry: AsyncRegistry,
                                                               tmp_path: Path) -> None:
    not_pem = tmp_path / "cert.pem"
    not_pem.write_text("hello")
    with pytest.raises(ConfigurationError, match="cert"):
        await XdsServer(memory_registry, tls=ServerTLS(str(tmp_path / "missing.pem"), str(not_pem))).start()
    with pytest.raises(ConfigurationError, match="not PEM"):
        await XdsServer(memory_registry, tls=ServerTLS(str(not_pem), str(not_pem))).start()
