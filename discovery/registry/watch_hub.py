"""One backend watch per service per registry, fanned out to every subscriber, with its snapshot cached.

This is the only fan-out: a backend's ``watch()`` is a plain stream per call, and one task here reads it and
calls every subscriber (docs/decisions/watch-fan-out.md). The cache is an immutable :class:`Snapshot` held in a
plain attribute, so a reader in any thread gets a consistent set without a lock or a hop onto the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from tenacity import wait_exponential_jitter

from discovery.core.backend import Backend
from discovery.core.backoff import retry_delay
from discovery.core.models import Snapshot
from discovery.observability.metrics import METRICS

log = logging.getLogger("discovery.registry.watch_hub")

SnapshotCallback = Callable[[Snapshot], None]
ServiceKey = tuple[str, str]

_retry_wait = wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.5)


class SharedWatch:
    """The single backend watch of one service, its latest snapshot and its subscribers."""

    def __init__(self, backend: Backend, namespace: str, service: str) -> None:
        self.namespace = namespace
        self.service = service
        self.latest: Snapshot | None = None
        self._backend = backend
        self._subscribers: list[SnapshotCallback] = []
        self._revision = 0
        self._task = asyncio.create_task(self._run(), name=f"discovery-watch-{namespace}/{service}")

    @property
    def subscriber_count(self) -> int:
        """How many subscribers share this watch."""
        return len(self._subscribers)

    def add(self, callback: SnapshotCallback) -> None:
        """Add a subscriber; it receives the cached snapshot first (soon, on the loop), then every change."""
        self._subscribers.append(callback)
        if self.latest is not None:
            latest = self.latest
            asyncio.get_running_loop().call_soon(self._deliver_one, callback, latest)

    def remove(self, callback: SnapshotCallback) -> None:
        """Remove a subscriber (no-op if absent)."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(callback)

    async def stop(self) -> None:
        """Cancel the backend watch."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _deliver_one(self, callback: SnapshotCallback, snapshot: Snapshot) -> None:
        if callback not in self._subscribers:
            return
        try:
            callback(snapshot)
        except Exception:
            log.exception("snapshot subscriber of %s/%s failed", self.namespace, self.service)

    def _publish(self, snapshot: Snapshot) -> None:
        previous = self.latest
        if previous is not None and previous.stale == snapshot.stale and previous.same_members(snapshot):
            return
        arrived = time.perf_counter()
        self._revision += 1
        stamped = snapshot.with_revision(self._revision)
        self.latest = stamped
        for callback in list(self._subscribers):
            self._deliver_one(callback, stamped)
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

    def subscribe(self, namespace: str, service: str, callback: SnapshotCallback) -> None:
        """Start (or join) the watch of a service. Must run on the registry's event loop."""
        key = (namespace, service)
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = SharedWatch(self._backend, namespace, service)
        watch.add(callback)

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

    def cached(self, namespace: str, service: str) -> Snapshot | None:
        """The latest snapshot of a watched service, or None. Safe from any thread."""
        watch = self._watches.get((namespace, service))
        return None if watch is None else watch.latest

    async def close(self) -> None:
        """Stop every watch."""
        watches = list(self._watches.values())
        self._watches.clear()
        for watch in watches:
            await watch.stop()
