"""Backend URLs a test owns alone on the shared harness servers (the conformance runs' pattern)."""

from __future__ import annotations

import pytest

from .specs import ZK_TICK_MS


def isolated_url(kind: str, request: pytest.FixtureRequest, tag: str, *, ttl: float,
                 memory_ttl: float | None = None, consul_ttl: float | None = None) -> str:
    """A URL of backend ``kind`` whose store / root / prefix / scope is ``tag`` (unique per test), with short
    liveness: ``ttl`` is the ZooKeeper session timeout and the etcd lease TTL; the memory and Consul TTLs are
    their defaults unless given. A real backend's server comes from its ``<kind>_server`` fixture."""
    if kind == "memory":
        return f"memory:///{tag}" + (f"?ttl={memory_ttl:g}" if memory_ttl is not None else "")
    server = request.getfixturevalue(f"{kind}_server")
    if kind == "zookeeper":
        return f"{server.url}/{tag}?session_timeout={ttl:g}&tick={ZK_TICK_MS / 1000}"
    if kind == "etcd":
        return f"{server.url}/{tag}?ttl={ttl:g}"
    return f"{server.url}/{tag}" + (f"?ttl={consul_ttl:g}" if consul_ttl is not None else "")
