"""etcd: one process watching many services shares one liveness probe, lists them with one read and follows them
with one namespace watch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from discovery.core.models import Instance, Snapshot
from discovery_etcd import EtcdBackend
from discovery_etcd import watch as watch_module
from discovery_etcd.watch import BULK_LIST_MIN, ServiceWatch
from tests.backends.etcd_support import started_backend, unique_prefix
from tests.harness import ServerHandle
from tests.harness.relay import Relay

pytestmark = pytest.mark.servers

WATCHED = 40
TIMEOUT = 1.0  # the URL's timeout: the probe's quiet period


class Reader:
    """Reads a stream at once, as the registry's hub does (its etcd watch opens once the first set is taken)."""

    def __init__(self, watch: ServiceWatch) -> None:
        self.watch = watch
        self.seen: list[Snapshot] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for snapshot in self.watch:
            self.seen.append(snapshot)

    async def until(self, predicate: Callable[[Snapshot], bool]) -> Snapshot:
        async with asyncio.timeout(15):
            while not (self.seen and predicate(self.seen[-1])):
                await asyncio.sleep(0.01)
        return self.seen[-1]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.watch.aclose()


async def _one_instance_each(backend: EtcdBackend, services: int) -> None:
    """Register instance ``i1`` in each of ``svc-0`` .. ``svc-<services - 1>``."""
    await asyncio.gather(*(
        backend.register(Instance(f"svc-{n}", "i1", "127.0.0.1", 9000 + n), 30.0, lambda state: None)
        for n in range(services)
    ))


@contextlib.asynccontextmanager
async def _watching_through_relay(
    server: ServerHandle, services: int, query: str
) -> AsyncIterator[tuple[EtcdBackend, Relay, EtcdBackend, list[Reader]]]:
    """A writer holding one instance in each of ``services`` services, and a watcher reaching etcd through a relay;
    the readers put in the list are closed on the way out."""
    prefix = unique_prefix()
    writer = await started_backend(f"{server.url}{prefix}?ttl=30")
    readers: list[Reader] = []
    try:
        await _one_instance_each(writer, services)
        with Relay(server.host, server.port) as relay:
            watcher = await started_backend(f"etcd://{relay.address}{prefix}{query}")
            try:
                yield writer, relay, watcher, readers
            finally:
                for reader in readers:
                    await reader.close()
                relay.pass_through()
                await watcher.close()
    finally:
        await writer.close()


async def test_many_streams_share_one_probe_and_one_first_read(
    etcd_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_module, "LIST_PAGE", 7)  # the namespace read takes several pages
    url = f"{etcd_server.url}{unique_prefix()}?ttl=30&timeout={TIMEOUT:g}"
    writer = await started_backend(url)
    watcher = await started_backend(url)
    readers: list[Reader] = []
    try:
        await asyncio.gather(*(
            writer.register(Instance(f"svc-{n}", "i1", "127.0.0.1", 9000 + n), 30.0, lambda state: None)
            for n in range(0, WATCHED, 2)  # every other service has an instance; the rest are empty
        ))
        await writer.register(Instance("svc-0", "other", "127.0.0.1", 9999, namespace="elsewhere"), 30.0,
                              lambda state: None)
        readers = [Reader(watcher.watch("default", f"svc-{n}")) for n in range(WATCHED)]  # all in one iteration
        firsts = await asyncio.gather(*(reader.until(lambda s: True) for reader in readers))
        assert [sorted(s.ids()) for s in firsts] == [["i1"] if n % 2 == 0 else [] for n in range(WATCHED)]
        lister = readers[0].watch.lister
        assert WATCHED >= BULK_LIST_MIN
        assert (lister.namespace_reads, lister.service_reads) == (1, 0), "one read of the namespace for all"
        assert len({s.revision for s in firsts}) == 1, "listed at one revision"

        # Idle for three quiet periods: one progress request per period for the one client, not one per stream.
        probe = readers[0].watch.probe
        before = probe.progress_requests
        await asyncio.sleep(3.5 * TIMEOUT)
        asked = probe.progress_requests - before
        assert 1 <= asked <= 4, f"{asked} progress requests for {WATCHED} idle streams"

        # Still live: a change after the idle period reaches its stream.
        await writer.register(Instance("svc-1", "late", "127.0.0.1", 9100), 30.0, lambda state: None)
        late = await readers[1].until(lambda s: "late" in s.ids())
        assert not late.stale
    finally:
        for reader in readers:
            await reader.close()
        await watcher.close()
        await writer.close()


async def test_each_page_of_a_namespace_read_has_a_deadline_of_its_own(
    etcd_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 20 services listed together, one key a page, through a relay adding 0.1 s to every chunk each way: the whole
    # read takes ~4 s against a 1 s request timeout, each page ~0.2 s. With one deadline for the whole read it
    # timed out, and every stream waiting for it marked its set stale and retried the same read (at 50 000
    # instances, 25 pages read while the loop set up 5 000 watch streams, this cost 3 s of the initial sync).
    monkeypatch.setattr(watch_module, "LIST_PAGE", 1)
    services = 20
    assert services >= BULK_LIST_MIN
    async with _watching_through_relay(etcd_server, services, f"?ttl=30&timeout={TIMEOUT:g}") as (
        _, relay, watcher, readers
    ):
        relay.delay(0.1)
        readers.extend(Reader(watcher.watch("default", f"svc-{n}")) for n in range(services))
        firsts = await asyncio.gather(*(reader.until(lambda s: True) for reader in readers))
        assert [(sorted(s.ids()), s.stale) for s in firsts] == [(["i1"], False)] * services
        lister = readers[0].watch.lister
        assert (lister.namespace_reads, lister.service_reads) == (1, 0), "listed once, without a retry"


async def test_streams_listed_together_follow_one_namespace_watch(etcd_server: ServerHandle) -> None:
    # Services svc-0 .. svc-39 (svc-1 is a prefix of svc-10 .. svc-19 as a string, not as a key segment), listed by one
    # namespace read: one etcd watch of the namespace hands each stream the events of its service, and only those.
    prefix = unique_prefix()
    url = f"{etcd_server.url}{prefix}?ttl=30"
    writer = await started_backend(url)
    watcher = await started_backend(url)
    readers: list[Reader] = []
    try:
        await _one_instance_each(writer, WATCHED)
        readers = [Reader(watcher.watch("default", f"svc-{n}")) for n in range(WATCHED)]
        await asyncio.gather(*(reader.until(lambda s: s.ids() == {"i1"}) for reader in readers))
        lister = readers[0].watch.lister
        shared = readers[0].watch.shared
        assert (lister.namespace_reads, lister.namespace_streams) == (1, 1)
        assert shared is not None and all(reader.watch.shared is shared for reader in readers)
        assert shared.member_count == WATCHED

        await writer.register(Instance("svc-1", "new", "127.0.0.1", 9500), 30.0, lambda state: None)
        await writer.deregister(Instance("svc-2", "i1", "127.0.0.1", 9002))
        await writer.register(Instance("svc-3", "i1", "127.0.0.1", 9003, labels={"v": "2"}), 30.0, lambda state: None)
        await writer.register(Instance("svc-4", "x", "127.0.0.1", 9600, namespace="elsewhere"), 30.0,
                              lambda state: None)
        await writer.register(Instance("svc-999", "x", "127.0.0.1", 9601), 30.0, lambda state: None)
        await writer.register(Instance("svc-10", "last", "127.0.0.1", 9501), 30.0, lambda state: None)
        assert (await readers[1].until(lambda s: "new" in s.ids())).ids() == {"i1", "new"}
        assert (await readers[2].until(lambda s: not s.ids())).ids() == set()
        await readers[3].until(lambda s: s.get("i1") is not None and s.get("i1").labels == {"v": "2"})  # type: ignore[union-attr]
        assert (await readers[10].until(lambda s: "last" in s.ids())).ids() == {"i1", "last"}
        await asyncio.sleep(0.2)  # the streams left alone have nothing to read; give them the chance to misread
        changed = {1, 2, 3, 10}
        assert [len(reader.seen) for n, reader in enumerate(readers) if n not in changed] == [1] * (WATCHED - 4)
        assert all(not reader.seen[-1].stale for reader in readers)

        # A stream that closes leaves the watch; the others go on; the watch ends with the last of them.
        await readers[5].close()
        assert shared.member_count == WATCHED - 1
        await writer.register(Instance("svc-6", "after", "127.0.0.1", 9502), 30.0, lambda state: None)
        await readers[6].until(lambda s: "after" in s.ids())
        for reader in readers:
            await reader.close()
        readers = []
        assert shared.member_count == 0 and not shared.running
    finally:
        for reader in readers:
            await reader.close()
        await watcher.close()
        await writer.close()


async def test_a_namespace_watch_that_stops_answering_leaves_each_stream_to_reconnect_alone(
    etcd_server: ServerHandle,
) -> None:
    # Partitioned (the relay holds every byte): the probe gives up on the namespace watch's client after two quiet
    # periods, every stream shows its set stale, and once healed each resumes with a watch stream of its own and
    # shows what changed meanwhile.
    services = 20
    assert services >= BULK_LIST_MIN
    async with _watching_through_relay(etcd_server, services, f"?ttl=30&timeout={TIMEOUT:g}") as (
        writer, relay, watcher, readers
    ):
        readers.extend(Reader(watcher.watch("default", f"svc-{n}")) for n in range(services))
        await asyncio.gather(*(reader.until(lambda s: s.ids() == {"i1"}) for reader in readers))
        shared = readers[0].watch.shared
        assert shared is not None and shared.member_count == services
        relay.blackhole()
        await asyncio.gather(*(reader.until(lambda s: s.stale) for reader in readers))
        assert shared.member_count == 0 and not shared.running
        await writer.register(Instance("svc-7", "meanwhile", "127.0.0.1", 9700), 30.0, lambda state: None)
        relay.pass_through()
        await readers[7].until(lambda s: not s.stale and s.ids() == {"i1", "meanwhile"})
        await asyncio.gather(*(reader.until(lambda s: not s.stale) for reader in readers))
        assert all(reader.watch.shared is None and reader.watch.resume_count >= 1 for reader in readers)
        await writer.register(Instance("svc-8", "later", "127.0.0.1", 9701), 30.0, lambda state: None)
        await readers[8].until(lambda s: s.ids() == {"i1", "later"})


async def test_streams_asking_while_their_namespace_is_read_wait_for_one_more_read(etcd_server: ServerHandle) -> None:
    # Subscriptions made one call after another from a thread arrive a few per loop iteration. 20 streams start a
    # namespace read (slowed by the relay); 20 more, one per iteration, arrive while it is in flight: they wait and are
    # listed by one more namespace read, and share its watch. Before, each iteration's few streams were listed one by
    # one (a read and a watch stream each), or, 16 at a time, by yet another read of the whole namespace.
    async with _watching_through_relay(etcd_server, WATCHED, "?ttl=30") as (_, relay, watcher, readers):
        relay.delay(0.05)
        readers.extend(Reader(watcher.watch("default", f"svc-{n}")) for n in range(WATCHED // 2))
        for n in range(WATCHED // 2, WATCHED):
            await asyncio.sleep(0)  # the next stream asks in the next loop iteration
            readers.append(Reader(watcher.watch("default", f"svc-{n}")))
        await asyncio.gather(*(reader.until(lambda s: s.ids() == {"i1"}) for reader in readers))
        lister = readers[0].watch.lister
        assert (lister.namespace_reads, lister.service_reads, lister.namespace_streams) == (2, 0, 2)
        assert len({id(reader.watch.shared) for reader in readers}) == 2
