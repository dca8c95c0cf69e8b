"""A registry follows the records of its own registrations and adopts what someone else changed in them.

An operator may change a registration another process holds (``discovery drain``, ``discovery set-status``:
:meth:`discovery.core.backend.Backend.set_status`). The owner learns it here: for every service it has
registrations of, the registry reads one backend watch stream of its own. It does not go through the watch hub
(docs/decisions/watch-fan-out.md): a hub watch answers the registry's reads from its cache, and a registrant's
reads must not change because it follows its own records. When a fresh snapshot shows one of its instances with
another status, labels, weight or zone than the registration last wrote, the registration adopts them: its
``instance`` becomes the one shown, its ``on_instance_change`` callbacks run, and the backend is told
(:meth:`Backend.adopt`) so that a later heal (lost session, lease or agent state) writes the changed record back,
not the old one. The owner's own ``update()`` then starts from the adopted instance.

What is not adopted: a stale snapshot (the backend is unreachable); a record with another address, port or named
ports (another registrant took the id over: the backend's ownership rules handle that); a missing record (the
backend heals it); and, while the owner's own write is in flight or for :data:`OWN_WRITE_GRACE` seconds after it
until the watch has shown it, a different record, which may be the watch lagging behind that write. It is looked at
again when the grace period ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from discovery.core.backend import Backend
from discovery.core.models import Instance, Snapshot
from discovery.core.tasks import cancel_and_wait
from discovery.registry.registration import OWN_WRITE_GRACE, RegistrationRecord

log = logging.getLogger("discovery.registry.follow")

ServiceKey = tuple[str, str]

#: The fields another party may change in a record that the owner adopts (what ``set_status`` and a hand edit of
#: labels change); a record that differs in anything else belongs to another registrant.
ADOPTED_FIELDS = ("status", "labels", "weight", "zone")
_RETRY_SECONDS = (0.1, 0.5, 2.0, 5.0)
#: After looking at one snapshot, the follower waits this long before taking the next: the changes made meanwhile
#: come as one snapshot. Each look reads the whole service; taken per change, a registrant writing N instances of
#: one service did O(N²) work on its loop (16 threads registering on memory: 14 000 -> 900 a second), and at one
#: look per 0.1 s a registrant writing 1 600 instances of one service still spent most of its time following them
#: (benchmarks scenario 2, 16 registrants: ZooKeeper 782/s following vs 1 938/s not, Consul 202 vs 299/s). A
#: change after a quiet second is still seen at once: the interval only caps how often a busy service is read.
FOLLOW_INTERVAL = 1.0

__all__ = ["ADOPTED_FIELDS", "OWN_WRITE_GRACE", "RecordFollower"]


def _adoptable(ours: Instance, shown: Instance) -> bool:
    same_owner = (ours.address, ours.port, dict(ours.ports)) == (shown.address, shown.port, dict(shown.ports))
    return same_owner and any(getattr(ours, name) != getattr(shown, name) for name in ADOPTED_FIELDS)


class RecordFollower:
    """The watches over a registry's own records: one per service with registrations, stopped with the last one.

    Not thread-safe: its registry uses it on its event loop.
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._records: dict[ServiceKey, dict[str, RegistrationRecord]] = {}
        self._tasks: dict[ServiceKey, asyncio.Task[None]] = {}
        self._latest: dict[ServiceKey, Snapshot] = {}
        self._rechecks: dict[ServiceKey, asyncio.TimerHandle] = {}

    def track(self, record: RegistrationRecord) -> None:
        """Follow ``record`` (it replaces an earlier record of the same instance key). Runs on the event loop."""
        namespace, service, instance_id = record.instance.key
        key = (namespace, service)
        self._records.setdefault(key, {})[instance_id] = record
        if key not in self._tasks:
            self._tasks[key] = asyncio.get_running_loop().create_task(
                self._follow(key), name=f"discovery-follow-{namespace}/{service}"
            )

    async def untrack(self, record: RegistrationRecord) -> None:
        """Stop following ``record``; the service's watch stops with its last record."""
        namespace, service, instance_id = record.instance.key
        key = (namespace, service)
        records = self._records.get(key)
        if records is None or records.get(instance_id) is not record:
            return
        del records[instance_id]
        if not records:
            await self._stop(key)

    async def close(self) -> None:
        """Stop every watch."""
        for key in list(self._tasks):
            await self._stop(key)

    async def _stop(self, key: ServiceKey) -> None:
        self._records.pop(key, None)
        self._latest.pop(key, None)
        recheck = self._rechecks.pop(key, None)
        if recheck is not None:
            recheck.cancel()
        task = self._tasks.pop(key, None)
        if task is not None:
            await cancel_and_wait(task)

    async def _follow(self, key: ServiceKey) -> None:
        failures = 0
        while True:
            stream = self._backend.watch(*key)
            try:
                async for snapshot in stream:
                    failures = 0
                    if not snapshot.stale:
                        self._latest[key] = snapshot
                        self._check(key)
                    await asyncio.sleep(FOLLOW_INTERVAL)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the backend handles its outages; this is the safety net
                log.debug("following the records of %s/%s: %s; retrying", *key, error)
                await asyncio.sleep(_RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)])
                failures += 1
            finally:
                close = getattr(stream, "aclose", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()

    def _check(self, key: ServiceKey) -> None:
        snapshot = self._latest.get(key)
        if snapshot is None:
            return
        settling_until = 0.0
        for instance_id, record in list(self._records.get(key, {}).items()):
            shown = snapshot.get(instance_id)
            if shown is None:
                continue
            ours = record.instance
            if shown == ours:
                if not record.writing:
                    record.confirmed()
                continue
            if not _adoptable(ours, shown):
                continue
            if record.settling():
                settling_until = max(settling_until, record.settling_until, time.monotonic() + 0.05)
                continue
            self._adopt(record, shown)
        if settling_until and key not in self._rechecks:
            loop = asyncio.get_running_loop()
            self._rechecks[key] = loop.call_at(loop.time() + settling_until - time.monotonic(), self._recheck, key)

    def _recheck(self, key: ServiceKey) -> None:
        self._rechecks.pop(key, None)
        self._check(key)

    def _adopt(self, record: RegistrationRecord, shown: Instance) -> None:
        ours = record.instance
        changed = ", ".join(f"{name} {getattr(ours, name)!s} -> {getattr(shown, name)!s}" for name in ADOPTED_FIELDS
                            if getattr(ours, name) != getattr(shown, name))
        log.info("registration %s was changed by someone else (%s); adopted", "/".join(ours.key), changed)
        adopted = ours.with_changes(**{name: getattr(shown, name) for name in ADOPTED_FIELDS})
        try:
            self._backend.adopt(adopted)
        except Exception:
            log.exception("the backend failed to adopt %s", "/".join(ours.key))
        record.adopt(adopted)
