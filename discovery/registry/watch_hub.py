"""One backend watch per service per registry, fanned out to every subscriber, with its snapshot cached.

This is the only fan-out: a backend's ``watch()`` is a plain stream per call, and one task here reads it and
calls every subscriber (docs/decisions/watch-fan-out.md). The cache is an immutable :class:`Snapshot` held in a
plain attribute, so a reader in any thread gets a consistent set without a lock or a hop onto the event loop.

A subscriber may give an ``on_end`` callback: it is called once when its subscription ends without it having
asked (the registry closed, or the backend's watch ended for good), so that a loop iterating the subscription
ends instead of waiting forever.

Session guarantees (docs/decisions/session-read-your-writes.md): revisions come from one counter per hub, so they
increase across every service and every restart of a watch; :meth:`WatchHub.settle` lets the registry wait until
the watch shows its own write; and each watch remembers the newest revision it has handed out (a cache read, a
delivery, a settled write) so that no reader of the registry is handed an older one afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import wait_exponential_jitter

from discovery.core.backend import Backend
from discovery.core.backoff import retry_delay
from discovery.core.errors import ClosedError
from discovery.core.models import Snapshot
from discovery.core.tasks import cancel_and_wait
from discovery.observability.metrics import METRICS

log = logging.getLogger("discovery.registry.watch_hub")

SnapshotCallback = Callable[[Snapshot], None]
EndCallback = Callable[[], None]
SnapshotTest = Callable[[Snapshot], bool]
ServiceKey = tuple[str, str]

_retry_wait = wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.5)


@dataclass(eq=False, slots=True)
class _Subscriber:
    callback: SnapshotCallback
    on_end: EndCallback | None
    #: The revision last delivered: a subscriber never gets an older snapshot, nor one twice.
    delivered: int = 0
    #: False once it left (a delivery already scheduled for it is then dropped): a flag, not a search of the
    #: subscriber list, so that a fan-out to N subscribers stays O(N), not O(N²).
    active: bool = True


class SharedWatch:
    """The single backend watch of one service, its latest snapshot and its subscribers."""

    def __init__(
        self,
        backend: Backend,
        namespace: str,
        service: str,
        on_finished: Callable[[SharedWatch], None],
        next_revision: Callable[[], int],
    ) -> None:
        self.namespace = namespace
        self.service = service
        self.latest: Snapshot | None = None
        self._backend = backend
        self._subscribers: list[_Subscriber] = []
        self._next_revision = next_revision
        self._on_finished = on_finished
        self._settling: list[tuple[SnapshotTest, asyncio.Future[bool]]] = []
        # Written from the loop and from readers' threads (the blocking facade reads the cache in the caller's
        # thread); the lock is taken only when the value grows, once per snapshot, not per read.
        self._handed_out = 0
        self._handed_out_lock = threading.Lock()
        self._task = asyncio.create_task(self._run(), name=f"discovery-watch-{namespace}/{service}")

    @property
    def handed_out(self) -> int:
        """The newest revision any reader of the registry has been given from this watch."""
        return self._handed_out

    def hand_out(self, snapshot: Snapshot) -> Snapshot:
        """Note that ``snapshot`` is being given to a reader (any thread); returns it."""
        if snapshot.revision > self._handed_out:
            with self._handed_out_lock:
                self._handed_out = max(self._handed_out, snapshot.revision)
        return snapshot

    async def settle(self, shows: SnapshotTest, timeout: float) -> bool:
        """Wait until the latest snapshot ``shows`` what is expected (or is stale: the backend is away, and a stale
        snapshot says so), at most ``timeout`` seconds; the snapshot that settles it counts as handed out.
        False if the time ran out or the watch ended first.
        """
        latest = self.latest
        if latest is not None and (latest.stale or shows(latest)):
            self.hand_out(latest)
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        waiter = (shows, future)
        self._settling.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._settling.remove(waiter)

    @property
    def subscriber_count(self) -> int:
        """How many subscribers share this watch."""
        return len(self._subscribers)

    def add(self, callback: SnapshotCallback, on_end: EndCallback | None = None) -> None:
        """Add a subscriber; it receives the cached snapshot first (soon, on the loop), then every change."""
        subscriber = _Subscriber(callback, on_end)
        self._subscribers.append(subscriber)
        if self.latest is not None:
            asyncio.get_running_loop().call_soon(self._deliver_latest, subscriber)

    def _deliver_latest(self, subscriber: _Subscriber) -> None:
        # The latest at delivery time, not at subscription: a newer one may have been published in between.
        if self.latest is not None:
            self._deliver_one(subscriber, self.latest)

    def remove(self, callback: SnapshotCallback) -> None:
        """Remove a subscriber (no-op if absent); its ``on_end`` is not called: it asked to leave."""
        for position, subscriber in enumerate(self._subscribers):
            if subscriber.callback == callback:
                subscriber.active = False
                del self._subscribers[position]
                return

    def end_subscriptions(self) -> None:
        """Remove every subscriber, calling each one's ``on_end``; release whoever waits in :meth:`settle`."""
        self._release_settling(False)
        subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            subscriber.active = False
            if subscriber.on_end is None:
                continue
            try:
                subscriber.on_end()
            except Exception:
                log.exception("end callback of a %s/%s subscriber failed", self.namespace, self.service)

    def _release_settling(self, outcome: bool) -> None:
        waiters, self._settling = self._settling, []
        for _, future in waiters:
            if not future.done():
                future.set_result(outcome)

    async def stop(self) -> None:
        """Cancel the backend watch."""
        self._release_settling(False)
        await cancel_and_wait(self._task)

    def _deliver_one(self, subscriber: _Subscriber, snapshot: Snapshot) -> None:
        if not subscriber.active or snapshot.revision <= subscriber.delivered:
            return
        subscriber.delivered = snapshot.revision
        try:
            subscriber.callback(snapshot)
        except Exception:
            log.exception("snapshot subscriber of %s/%s failed", self.namespace, self.service)

    def _publish(self, snapshot: Snapshot) -> None:
        previous = self.latest
        if previous is not None and previous.stale == snapshot.stale and previous.same_members(snapshot):
            return
        arrived = time.perf_counter()
        stamped = snapshot.with_revision(self._next_revision())
        self.latest = stamped
        for subscriber in list(self._subscribers):
            self._deliver_one(subscriber, stamped)
        if self._settling:
            for shows, future in list(self._settling):
                if not future.done() and (stamped.stale or shows(stamped)):
                    self.hand_out(stamped)
                    future.set_result(True)
        if stamped.stale and (previous is None or not previous.stale):
            log.info("%s/%s: serving the last known set, marked stale (backend unreachable)",
                     self.namespace, self.service)
        elif previous is not None and previous.stale and not stamped.stale:
            log.info("%s/%s: fresh again (%d instances)", self.namespace, self.service, len(stamped))
        if METRICS.active:
            METRICS.snapshot(stamped, time.perf_counter() - arrived)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async for snapshot in self._backend.watch(self.namespace, self.service):
                    failures = 0
                    self._publish(snapshot)
                # The backend ended the stream for good (it is closing): nothing more will come.
                self._on_finished(self)
                self.end_subscriptions()
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # A backend is meant to handle its own outages; this is the safety net if one escapes.
                failures += 1
                log.warning("watch of %s/%s failed (%s); retrying", self.namespace, self.service, error)
                if self.latest is not None and not self.latest.stale:
                    self._publish(self.latest.with_revision(self.latest.revision, stale=True))
                await asyncio.sleep(retry_delay(_retry_wait, failures))


class WatchHub:
    """All shared watches of one registry."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._watches: dict[ServiceKey, SharedWatch] = {}
        self._closed = False
        # One counter for every snapshot this registry stamps: revisions grow across services and across a watch
        # stopped and started again, so "newer" is always "larger".
        self._revisions = itertools.count(1)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def subscribe(
        self, namespace: str, service: str, callback: SnapshotCallback, on_end: EndCallback | None = None
    ) -> None:
        """Start (or join) the watch of a service. Must run on the registry's event loop.

        ``on_end`` is called once if the subscription ends without :meth:`unsubscribe` (the hub closed, or the
        backend ended the watch). Raises :class:`ClosedError` once the hub is closed.
        """
        if self._closed:
            raise ClosedError("this registry is closed")
        key = (namespace, service)
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = SharedWatch(
                self._backend, namespace, service, self._finished, self.next_revision
            )
        watch.add(callback, on_end)

    def _finished(self, watch: SharedWatch) -> None:
        key = (watch.namespace, watch.service)
        if self._watches.get(key) is watch:
            del self._watches[key]

    async def unsubscribe(self, namespace: str, service: str, callback: SnapshotCallback) -> None:
        """Leave a watch; the last subscriber to leave stops it."""
        key = (namespace, service)
        watch = self._watches.get(key)
        if watch is None:
            return
        watch.remove(callback)
        if watch.subscriber_count == 0:
            del self._watches[key]
            await watch.stop()

    def watches(self) -> tuple[SharedWatch, ...]:
        """Every shared watch running now (for health reports)."""
        return tuple(self._watches.values())

    def next_revision(self) -> int:
        """A revision larger than every one stamped so far (for a snapshot read fresh from the backend, too)."""
        return next(self._revisions)

    def watching(self, namespace: str, service: str) -> bool:
        """Whether this registry watches the service (its writes must then settle on the loop). Safe from any
        thread."""
        return (namespace, service) in self._watches

    def cached(self, namespace: str, service: str) -> Snapshot | None:
        """The latest snapshot of a watched service (noted as handed out), or None. Safe from any thread."""
        watch = self._watches.get((namespace, service))
        if watch is None:
            return None
        latest = watch.latest
        return None if latest is None else watch.hand_out(latest)

    def handed_out(self, namespace: str, service: str) -> int:
        """The newest revision of a watched service given to any reader (0 if unwatched). Safe from any thread."""
        watch = self._watches.get((namespace, service))
        return 0 if watch is None else watch.handed_out

    def hand_out(self, namespace: str, service: str, snapshot: Snapshot) -> None:
        """Note that a watch iterator gives ``snapshot`` to its reader. Safe from any thread."""
        watch = self._watches.get((namespace, service))
        if watch is not None:
            watch.hand_out(snapshot)

    async def settle(self, namespace: str, service: str, shows: SnapshotTest, timeout: float) -> bool:
        """Wait until a watched service's latest snapshot ``shows`` a write (see :meth:`SharedWatch.settle`);
        True at once for a service nobody watches: its reads go to the backend.
        """
        watch = self._watches.get((namespace, service))
        if watch is None:
            return True
        return await watch.settle(shows, timeout)

    async def close(self) -> None:
        """End every subscription (each one's ``on_end`` first, so loops over them end at once), then stop
        every backend watch.
        """
        self._closed = True
        watches = list(self._watches.values())
        self._watches.clear()
        for watch in watches:
            watch.end_subscriptions()
        for watch in watches:
            await watch.stop()
