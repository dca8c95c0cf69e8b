"""Finding 10: ZooKeeper without credentials creates world-writable znodes; that was documented but never said at
run time, and a stranger rewrote an instance to 6.6.6.6 which the registry served.

ACLs need an identity, so without ``username``/``password`` the risk cannot be removed, only named: the backend
now logs one warning at connect naming it and the fix (tests/security/test_zookeeper_security.py shows the same
stranger refused once credentials are set). What a stranger writes is still validated on read: an address with
a hostile scope id never reaches a client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient

from discovery import AsyncRegistry, Instance
from discovery.testing import eventually
from tests.harness import ServerHandle

pytestmark = pytest.mark.servers


@pytest.fixture
def stranger(zookeeper_server: ServerHandle) -> Iterator[KazooClient]:
    """A plain kazoo client with no credentials at all: anyone who can reach the server."""
    client = KazooClient(hosts=zookeeper_server.url.removeprefix("zookeeper://"))
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


async def test_connecting_without_credentials_warns_once_and_the_risk_is_real(
    zookeeper_server: ServerHandle, stranger: KazooClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    root = f"/open-{uuid.uuid4().hex[:8]}"
    async with AsyncRegistry.connect(f"{zookeeper_server.url}{root}?session_timeout=2") as registry:
        warnings = [r.getMessage() for r in caplog.records if r.name.startswith("discovery.backends.zookeeper")
                    and "world:anyone" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert root in warnings[0] and "rewrite" in warnings[0] and "username=" in warnings[0]

        await registry.register(Instance("api", "api-1", "10.0.0.1", 80))
        path = f"{root}/default/api/api-1"

        def rewrite(address: str) -> None:
            data, _ = stranger.get(path)
            record = json.loads(data)
            record["address"] = address
            stranger.set(path, json.dumps(record).encode())

        async def addresses() -> list[str]:
            return [i.address for i in await registry.instances("api")]

        await asyncio.to_thread(rewrite, "6.6.6.6")  # what the warning is about
        assert await eventually(addresses, lambda found: found == ["6.6.6.6"], 10) == ["6.6.6.6"]
        await asyncio.to_thread(rewrite, "fe80::1%\x1b]0;pwned\x07")
        assert await eventually(addresses, lambda found: found == [], 10) == [], "a hostile record is skipped"


async def test_connecting_with_credentials_does_not_warn(zookeeper_server: ServerHandle,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    url = f"{zookeeper_server.url}/acl-{uuid.uuid4().hex[:8]}?session_timeout=2&username=app&password=pw-{uuid.uuid4()}"
    async with AsyncRegistry.connect(url):
        pass
    assert not [r for r in caplog.records if "world:anyone" in r.getMessage()]
