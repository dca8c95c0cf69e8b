"""What the fault suite needs to know about each backend: its URL, its bounds, how to make it forget a session.

All three run with the same short liveness TTL (:data:`TTL`), so a 2 s outage is shorter than the TTL and a
long one is longer. Every URL gets a private root / prefix / scope so trials never see each other's keys.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from discovery.registry.async_registry import AsyncRegistry
from discovery_consul import ConsulBackend
from discovery_consul.layout import consul_service_id
from discovery_etcd import EtcdBackend
from discovery_zookeeper import ZooKeeperBackend
from tests.harness.specs import ZK_TICK_MS

BACKENDS = ("zookeeper", "etcd", "consul")
#: The liveness TTL of every registration in the fault suite (ZooKeeper: the session timeout).
TTL = 3.0
#: Consul: blocking-query wait and request timeout, so that a watcher notices an unreachable agent within
#: ``timeout + wait * 17/16`` (the defaults, 5 s and 60 s, would take over a minute).
CONSUL_WAIT = 2.0
CONSUL_TIMEOUT = 2.0
#: etcd: request timeout; an idle watch stream is probed after it and given it again to answer.
ETCD_TIMEOUT = 2.0


@dataclass(frozen=True)
class Target:
    """One backend under test."""

    kind: str

    def url(self, hosts: str, scope: str | None = None) -> str:
        """A URL for ``hosts`` (``h:p`` or ``h1:p1,h2:p2,...``) with a private scope."""
        scope = scope or f"faults-{uuid.uuid4().hex[:12]}"
        if self.kind == "zookeeper":
            return f"zookeeper://{hosts}/{scope}?session_timeout={TTL:g}&tick={ZK_TICK_MS / 1000:g}"
        if self.kind == "etcd":
            return f"etcd://{hosts}/{scope}?ttl={TTL:g}&timeout={ETCD_TIMEOUT:g}"
        return f"consul://{hosts}/{scope}?ttl={TTL:g}&timeout={CONSUL_TIMEOUT:g}&wait={CONSUL_WAIT:g}"

    @property
    def unreachable_notice(self) -> float:
        """Seconds within which a watcher behind a silent partition must mark its snapshot stale.

        ZooKeeper: kazoo's read timeout (2/3 of the session timeout) suspends the connection. etcd: the watch
        stream's progress probe (quiet for ``timeout``, then ``timeout`` to answer). Consul: the request
        timeout plus the blocking wait (and Consul's wait/16 jitter).
        """
        if self.kind == "zookeeper":
            return TTL
        if self.kind == "etcd":
            return 2 * ETCD_TIMEOUT
        return CONSUL_TIMEOUT + CONSUL_WAIT * 17 / 16 + 1.0

    async def forget_registrations(self, registry: AsyncRegistry, server_host: str, server_port: int) -> None:
        """Make the server forget ``registry``'s registrations while it stays up (fault 3).

        ZooKeeper: expire the session from outside (a second client attaches with the same session id and
        password, then closes it). etcd: revoke the lease(s). Consul: deregister the services from the agent.
        """
        backend = registry.backend
        if isinstance(backend, ZooKeeperBackend):
            await asyncio.to_thread(_expire_zookeeper_session, backend, server_host, server_port)
        elif isinstance(backend, EtcdBackend):
            for lease_id in backend.lease_ids().values():
                if lease_id is not None:
                    await backend.pool.call("revoke (fault)", lambda client, lid=lease_id: client.revoke_lease(lid))
        elif isinstance(backend, ConsulBackend):
            import aiohttp

            async with aiohttp.ClientSession() as http:
                for registration in registry.registrations:
                    service_id = consul_service_id(registration.instance, backend.settings.scope)
                    url = f"http://{server_host}:{server_port}/v1/agent/service/deregister/{service_id}"
                    async with http.put(url) as response:
                        response.raise_for_status()
        else:  # pragma: no cover
            raise TypeError(f"no session-loss fault for {type(backend).__name__}")


def _expire_zookeeper_session(backend: ZooKeeperBackend, host: str, port: int) -> None:
    from kazoo.client import KazooClient

    credentials = backend.session_credentials_for_tests()
    if credentials is None:
        raise RuntimeError("the ZooKeeper backend has no live session to expire")
    session_id, password = credentials
    twin = KazooClient(hosts=f"{host}:{port}", client_id=(session_id, password), timeout=TTL)
    twin.start(timeout=15)
    twin.stop()
    twin.close()
