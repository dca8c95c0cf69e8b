"""Helpers shared by the ZooKeeper backend tests and the measurement script."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kazoo.client import KazooClient

from discovery_zookeeper import ZooKeeperBackend
from discovery_zookeeper.connection import ZooKeeperSession
from tests.harness import ServerHandle
from tests.harness.specs import ZK_TICK_MS

SESSION_TIMEOUT = 2.0
TICK = ZK_TICK_MS / 1000


def backend_url(server: ServerHandle, root: str | None = None, **params: object) -> str:
    """A URL with a private root, the short test session timeout and the harness tick."""
    query = {"session_timeout": SESSION_TIMEOUT, "tick": TICK, **params}
    text = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{server.url}/{root or 'zk-' + uuid.uuid4().hex[:12]}?{text}"


def raw_client(server: ServerHandle) -> KazooClient:
    """A plain started kazoo client (blocking API; call from a thread or in test set-up only)."""
    client = KazooClient(hosts=f"{server.host}:{server.port}", timeout=SESSION_TIMEOUT)
    client.start(timeout=15)
    return client


def expire_session_now(server: ServerHandle, backend: ZooKeeperBackend) -> int:
    """Force the backend's session to expire: attach a second client to it (same id and password), close that.

    Returns the expired session id.
    """
    credentials = backend.session_credentials_for_tests()
    assert credentials is not None, "backend has no live session"
    session_id, password = credentials
    twin = KazooClient(hosts=f"{server.host}:{server.port}", client_id=(session_id, password), timeout=SESSION_TIMEOUT)
    twin.start(timeout=15)
    twin.stop()
    twin.close()
    return session_id


def requests_sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record what every ZooKeeper session sends from here on (``get_children``, ``get``, ``multiRead``...)."""
    sent: list[str] = []
    send = ZooKeeperSession.send

    def sending(self: ZooKeeperSession, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(what)
        return send(self, what, call, *args, **kwargs)

    monkeypatch.setattr(ZooKeeperSession, "send", sending)
    return sent
