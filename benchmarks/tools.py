"""The clients under test, behind one small blocking interface: this library and each backend's raw client.

A :class:`Tool` registers instances of one service, deregisters them, watches the service's id set and reads
it once (uncached). Each raw tool does the least a hand-written integration would do for the same job (the
same liveness mechanism, one read per lookup) so that a ratio ours/raw is the cost of the abstraction:

* ``kazoo``: ephemeral znodes with a small JSON value, ``ChildrenWatch``, ``get_children`` + one ``get`` per child;
  ``kazoo-read`` (``raw-read``) also reads every new child in its watch, the work a snapshot of records takes.
* ``aetcd``: one shared lease kept alive every TTL/3, ``put`` with it, ``watch_prefix``, ``get_prefix``.
* ``py-consul``: agent service with a TTL check passed at once and every TTL/3, blocking queries on
  ``/v1/health/service?passing`` (alive instances only, as ours), one ``health.service`` read.

Watch callbacks receive ``frozenset`` of ids and may run on any thread; they must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from discovery.core.models import Instance
from discovery.registry.blocking import Registry
from discovery.registry.loop_thread import LoopThread

IdsCallback = Callable[[frozenset[str]], None]

ZK_TICK = 0.5  # the harness ZooKeeper's tickTime (tests/harness/specs.py)


@dataclass(frozen=True)
class Target:
    """Where a tool works: a backend kind, its server (``None`` for memory), a private scope and a service."""

    backend: str
    host: str
    port: int
    scope: str  # ZooKeeper root / etcd prefix / Consul scope / memory store name: isolates one measurement
    service: str
    ttl: float

    @property
    def ours_url(self) -> str:
        """The discovery URL of this target."""
        base = f"{self.backend}://{self.host}:{self.port}/{self.scope}"
        if self.backend == "memory":
            return f"memory:///{self.scope}"
        if self.backend == "zookeeper":
            return f"{base}?session_timeout={self.ttl:g}&tick={ZK_TICK:g}"
        return f"{base}?ttl={self.ttl:g}"

    def with_service(self, service: str) -> Target:
        """The same target for another service."""
        return Target(self.backend, self.host, self.port, self.scope, service, self.ttl)


class Tool(Protocol):
    """One client of one backend, blocking API."""

    name: str

    def register(self, instance_id: str) -> None:
        """Register an instance of the target service and keep it alive."""

    def deregister(self, instance_id: str) -> None:
        """Remove an instance."""

    def watch(self, on_ids: IdsCallback) -> None:
        """Call ``on_ids`` with the current id set, then after every change."""

    def read(self) -> frozenset[str]:
        """One uncached read of the id set."""

    def close(self) -> None:
        """Release everything (registrations are removed)."""


def payload(target: Target, instance_id: str) -> bytes:
    """The small JSON record the raw tools write (address, port, id: what a hand-written client stores)."""
    return json.dumps({"service": target.service, "id": instance_id, "address": "127.0.0.1", "port": 8080}).encode()


# --------------------------------------------------------------------------------------------------- ours


class OursTool:
    """This library's blocking :class:`Registry`."""

    name = "ours"

    def __init__(self, target: Target) -> None:
        self._target = target
        self.registry = Registry.connect(target.ours_url)
        self._registrations: dict[str, Any] = {}
        self._lock = threading.Lock()

    def instance(self, instance_id: str) -> Instance:
        """The instance registered for an id."""
        return Instance(self._target.service, instance_id, "127.0.0.1", 8080)

    def registration(self, instance_id: str) -> Any:
        """The :class:`discovery.Registration` of a registered id."""
        with self._lock:
            return self._registrations[instance_id]

    def register(self, instance_id: str) -> None:
        registration = self.registry.register(self.instance(instance_id), ttl=self._target.ttl)
        with self._lock:
            self._registrations[instance_id] = registration

    def deregister(self, instance_id: str) -> None:
        with self._lock:
            registration = self._registrations.pop(instance_id)
        registration.deregister()

    def watch(self, on_ids: IdsCallback) -> None:
        self.registry.subscribe(self._target.service, lambda snapshot: on_ids(frozenset(snapshot.ids())))

    def read(self) -> frozenset[str]:
        return frozenset(i.id for i in self.registry.instances(self._target.service, statuses=None))

    def close(self) -> None:
        self.registry.close()


# ------------------------------------------------------------------------------------------------- kazoo


class KazooTool:
    """Raw kazoo: ephemeral znodes under ``/<scope>/default/<service>``."""

    name = "kazoo"

    def __init__(self, target: Target) -> None:
        from kazoo.client import KazooClient

        self._target = target
        self._dir = f"/{target.scope}/default/{target.service}"
        self._client = KazooClient(hosts=f"{target.host}:{target.port}", timeout=target.ttl)
        self._client.start(timeout=15)
        self._client.ensure_path(self._dir)

    def register(self, instance_id: str) -> None:
        self._client.create(f"{self._dir}/{instance_id}", payload(self._target, instance_id), ephemeral=True)

    def deregister(self, instance_id: str) -> None:
        self._client.delete(f"{self._dir}/{instance_id}")

    def watch(self, on_ids: IdsCallback) -> None:
        from kazoo.recipe.watchers import ChildrenWatch

        ChildrenWatch(self._client, self._dir, lambda children: on_ids(frozenset(children)))

    def read(self) -> frozenset[str]:
        children = self._client.get_children(self._dir)
        for child in children:  # a lookup needs the records (address, port), as ours decodes them
            self._client.get(f"{self._dir}/{child}")
        return frozenset(children)

    def close(self) -> None:
        self._client.stop()
        self._client.close()


class KazooReadTool(KazooTool):
    """Raw kazoo doing a snapshot's work: ``ChildrenWatch``, then a ``get`` of every new child (as Curator's cache
    does), all sent at once; an id is reported once its record is read. The same work as our watch, which must
    deliver records (address, port), not names.
    """

    name = "kazoo-read"

    def watch(self, on_ids: IdsCallback) -> None:
        from kazoo.recipe.watchers import ChildrenWatch

        known: dict[str, bytes] = {}

        def on_children(children: list[str]) -> None:
            current = set(children)
            for gone in known.keys() - current:
                del known[gone]
            reads = [(child, self._client.get_async(f"{self._dir}/{child}")) for child in current - known.keys()]
            for child, read in reads:
                with contextlib.suppress(Exception):  # deleted between the listing and the read
                    known[child] = read.get(timeout=10)[0]
            on_ids(frozenset(known))

        ChildrenWatch(self._client, self._dir, on_children)


# ------------------------------------------------------------------------------------------------- aetcd


class AetcdTool:
    """Raw aetcd on its own loop thread: one lease kept alive every TTL/3; keys ``/<scope>/default/<service>/<id>``."""

    name = "aetcd"

    def __init__(self, target: Target) -> None:
        import aetcd

        self._target = target
        self._prefix = f"/{target.scope}/default/{target.service}/".encode()
        self._loop = LoopThread("bench-aetcd")
        self._client = aetcd.Client(host=target.host, port=target.port, timeout=5)
        self._lease = self._loop.run(self._client.lease(int(target.ttl)))
        self._tasks: list[asyncio.Future[Any]] = [
            asyncio.run_coroutine_threadsafe(self._keepalive(), self._loop.loop)
        ]

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self._target.ttl / 3)
            await self._lease.refresh()

    def register(self, instance_id: str) -> None:
        key = self._prefix + instance_id.encode()
        self._loop.run(self._client.put(key, payload(self._target, instance_id), lease=self._lease))

    def deregister(self, instance_id: str) -> None:
        self._loop.run(self._client.delete(self._prefix + instance_id.encode()))

    def watch(self, on_ids: IdsCallback) -> None:
        ready = threading.Event()
        self._tasks.append(asyncio.run_coroutine_threadsafe(self._follow(on_ids, ready), self._loop.loop))
        if not ready.wait(15):
            raise TimeoutError("aetcd watch did not start")

    async def _follow(self, on_ids: IdsCallback, ready: threading.Event) -> None:
        from aetcd.rtypes import EventKind

        listed = await self._client.get_prefix(self._prefix)
        ids = {kv.key[len(self._prefix) :].decode() for kv in listed}
        watch = await self._client.watch_prefix(self._prefix, start_revision=int(listed.header.revision) + 1)
        on_ids(frozenset(ids))
        ready.set()
        async for event in watch:
            name = event.kv.key[len(self._prefix) :].decode()
            if event.kind == EventKind.DELETE:
                ids.discard(name)
            else:
                ids.add(name)
            on_ids(frozenset(ids))

    def read(self) -> frozenset[str]:
        listed = self._loop.run(self._client.get_prefix(self._prefix))
        return frozenset(kv.key[len(self._prefix) :].decode() for kv in listed)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            self._loop.run(self._lease.revoke(), 5)
        with contextlib.suppress(Exception):
            self._loop.run(self._client.close(), 5)
        self._loop.stop()


# --------------------------------------------------------------------------------------------- py-consul


class ConsulTool:
    """Raw ``consul.aio`` (py-consul) on its own loop thread: agent services with one TTL check each."""

    name = "py-consul"

    def __init__(self, target: Target) -> None:
        self._target = target
        self._loop = LoopThread("bench-consul")
        self._client: Any = self._loop.run(self._make_client())
        self._checks: set[str] = set()
        self._tasks: list[asyncio.Future[Any]] = [
            asyncio.run_coroutine_threadsafe(self._heartbeat(), self._loop.loop)
        ]

    async def _make_client(self) -> Any:
        import consul.aio

        return consul.aio.Consul(host=self._target.host, port=self._target.port)

    def _service_id(self, instance_id: str) -> str:
        return f"{self._target.scope}-{self._target.service}-{instance_id}"

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._target.ttl / 3)
            for check in list(self._checks):
                with contextlib.suppress(Exception):
                    await self._client.agent.check.ttl_pass(check)

    async def _register(self, instance_id: str) -> None:
        from consul import Check

        service_id = self._service_id(instance_id)
        await self._client.agent.service.register(
            self._target.service,
            service_id=service_id,
            address="127.0.0.1",
            port=8080,
            meta={"id": instance_id},
            check=Check.ttl(f"{self._target.ttl:g}s"),
        )
        check = f"service:{service_id}"
        await self._client.agent.check.ttl_pass(check)  # a TTL check starts critical
        self._checks.add(check)

    def register(self, instance_id: str) -> None:
        self._loop.run(self._register(instance_id))

    def deregister(self, instance_id: str) -> None:
        service_id = self._service_id(instance_id)
        self._checks.discard(f"service:{service_id}")
        self._loop.run(self._client.agent.service.deregister(service_id))

    @staticmethod
    def _ids(entries: list[dict[str, Any]]) -> frozenset[str]:
        return frozenset(str(entry["Service"]["Meta"].get("id")) for entry in entries)

    def watch(self, on_ids: IdsCallback) -> None:
        ready = threading.Event()
        self._tasks.append(asyncio.run_coroutine_threadsafe(self._follow(on_ids, ready), self._loop.loop))
        if not ready.wait(15):
            raise TimeoutError("consul watch did not start")

    async def _follow(self, on_ids: IdsCallback, ready: threading.Event) -> None:
        index = None
        last: frozenset[str] | None = None
        while True:
            index, entries = await self._client.health.service(
                self._target.service, index=index, wait="60s", passing=True
            )
            ids = self._ids(entries)
            if ids != last:
                last = ids
                on_ids(ids)
            ready.set()

    def read(self) -> frozenset[str]:
        _, entries = self._loop.run(self._client.health.service(self._target.service, passing=True))
        return self._ids(entries)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for check in list(self._checks):
            with contextlib.suppress(Exception):
                self._loop.run(self._client.agent.service.deregister(check.removeprefix("service:")), 5)
        with contextlib.suppress(Exception):
            self._loop.run(self._client.close(), 5)
        self._loop.stop()


RAW_TOOLS: dict[str, type[KazooTool] | type[AetcdTool] | type[ConsulTool]] = {
    "zookeeper": KazooTool,
    "etcd": AetcdTool,
    "consul": ConsulTool,
}


def make_tool(name: str, target: Target) -> Tool:
    """``ours`` or ``raw`` for a target."""
    if name == "ours":
        return OursTool(target)
    if name == "raw":
        return RAW_TOOLS[target.backend](target)
    if name == "raw-read" and target.backend == "zookeeper":
        return KazooReadTool(target)
    raise ValueError(f"unknown tool {name!r}")
