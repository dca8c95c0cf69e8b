"""Finagle/Aurora ServerSet members on a real ZooKeeper are read-only instances (Curator records: see
test_zookeeper_curator_interop.py): a member appears, changes status, and leaves with its writer's session."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from discovery import AsyncRegistry
from discovery.core.models import Instance, Status
from tests.backends.zookeeper_support import backend_url, raw_client
from tests.harness import ServerHandle

pytestmark = pytest.mark.servers


def member(status: str) -> bytes:
    """Member JSON as Finagle's ZkAnnouncer / Aurora's executor write it."""
    return json.dumps({
        "serviceEndpoint": {"host": "127.0.0.1", "port": 31337},
        "additionalEndpoints": {"http": {"host": "127.0.0.1", "port": 31337}, "admin": {"host": "127.0.0.1",
                                                                                      "port": 9990}},
        "status": status,
        "shard": 0,
    }).encode()


async def test_serverset_member_appears_changes_and_leaves_with_its_session(zookeeper_server: ServerHandle) -> None:
    root = f"serverset-{uuid.uuid4().hex[:8]}"
    writer = raw_client(zookeeper_server)
    try:
        # A ServerSet path is <root>/<namespace>/<service>; members are ephemeral sequential "member_" nodes.
        path = writer.create(f"/{root}/default/search/member_", member("ALIVE"), ephemeral=True, sequence=True,
                             makepath=True)
        node = path.rsplit("/", 1)[1]
        async with (
            AsyncRegistry.connect(backend_url(zookeeper_server, root)) as registry,
            registry.watch("search") as watch,
        ):
            first = await watch.next(timeout=10)
            assert first.instances == (
                Instance("search", node, "127.0.0.1", 31337, labels={"shard": "0"},
                         ports={"http": 31337, "admin": 9990}),
            )
            assert await registry.services() == ("search",)
            await asyncio.to_thread(writer.set, path, member("STOPPING"))
            draining = await watch.until(lambda s: bool(s.instances) and s.instances[0].status != Status.UP,
                                         timeout=10)
            assert draining.instances[0].status == Status.DRAINING
            await asyncio.to_thread(writer.stop)  # the announcer's session ends: its ephemeral member goes
            await watch.until(lambda s: not s.instances, timeout=15)
    finally:
        writer.stop()
        writer.close()
