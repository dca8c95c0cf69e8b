"""etcd: one process watching many services shares one liveness probe and lists them with one read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from discovery.core.models import Instance, Snapshot
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
    prefix = unique_prefix()
    writer = await started_backend(f"{etcd_server.url}{prefix}?ttl=30")
    readers: list[Reader] = []
    try:
        services = 20
        assert services >= BULK_LIST_MIN
        await asyncio.gather(*(
            writer.register(Instance(f"svc-{n}", "i1", "127.0.0.1", 9000 + n), 30.0, lambda state: None)
            for n in range(services)
        ))
        with Relay(etcd_server.host, etcd_server.port) as relay:
            watcher = await started_backend(f"etcd://{relay.address}{prefix}?ttl=30&timeout={TIMEOUT:g}")
            try:
                relay.delay(0.1)
                readers = [Reader(watcher.watch("default", f"svc-{n}")) for n in range(services)]
                firsts = await asyncio.gather(*(reader.until(lambda s: True) for reader in readers))
                assert [(sorted(s.ids()), s.stale) for s in firsts] == [(["i1"], False)] * services
                lister = readers[0].watch.lister
                assert (lister.namespace_reads, lister.service_reads) == (1, 0), "listed once, without a retry"
            finally:
                for reader in readers:
                    await reader.close()
                relay.pass_through()
                await watcher.close()
    finally:
        await writer.close()
