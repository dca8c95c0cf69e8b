"""Watching one service with blocking queries on ``/v1/health/service/<service>``, one stream per ``watch()`` call.

A :class:`ServiceWatch` is what ``ConsulBackend.watch`` returns: an async iterator of full snapshots, driven by
its consumer (the registry's watch hub, which shares it among every subscriber of the service; there is no
sharing here). Its queries go through the client's separate pool for blocking queries.

Follows Consul's guidance for blocking queries: pass the last ``X-Consul-Index`` with ``wait``; reset the
index to 0 (a plain re-list) when it goes backwards; never pass an index below 1; rate-limit the loop with a
token bucket and add jitter, since an index can change without a change we care about. On an error the last
snapshot is yielded again ``stale`` and the query is retried after jittered exponential backoff (tenacity's
strategy); the first answer after that is a full re-list.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator

from tenacity import wait_random_exponential

from discovery.core.backoff import retry_delay
from discovery.core.errors import BackendUnavailableError, ValidationError
from discovery.core.foreign import log_skipped
from discovery.core.models import Instance, Snapshot
from discovery_consul import records
from discovery_consul.connection import ConsulClient

log = logging.getLogger("discovery.backends.consul.watch")

# At most RATE blocking queries per second after a burst of BURST: bounds the load of a flapping service
# while adding at most 1/RATE seconds to the detection of a change.
QUERY_RATE = 4.0
QUERY_BURST = 4.0
QUERY_JITTER = 0.05
#: Backoff between the retries of a failed query.
RETRY_WAIT = wait_random_exponential(multiplier=0.2, max=5.0)


class TokenBucket:
    """A token bucket (hand-written: 15 lines did not justify another dependency)."""

    def __init__(self, rate: float, burst: float, jitter: float = 0.0) -> None:
        self._rate = rate
        self._burst = burst
        self._jitter = jitter
        self._tokens = burst
        self._stamp = time.monotonic()
        self._granted = asyncio.Event()

    def grant(self) -> None:
        """Allow one query now, whatever the rate (wakes a :meth:`take` that is waiting)."""
        self._granted.set()

    async def take(self) -> None:
        """Wait until a token is available (or one is granted) and take it."""
        if self._granted.is_set():
            self._granted.clear()
            return
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            delay = (1.0 - self._tokens) / self._rate + random.uniform(0, self._jitter)
            try:
                async with asyncio.timeout(delay):
                    await self._granted.wait()
                self._granted.clear()
                return  # a granted query does not use up the rate
            except TimeoutError:
                pass
            self._tokens = 1.0
            self._stamp = time.monotonic()
        self._tokens -= 1.0


def decoded_entries(
    scope: str | None, namespace: str, service: str, entries: list[dict[str, object]]
) -> Iterator[tuple[dict[str, object], Instance]]:
    """Each health entry of one scope and namespace with its instance: ours that are alive and, in an unscoped
    ``default`` namespace, every foreign entry (read-only). An undecodable entry is skipped with one DEBUG line."""
    with_foreign = records.sees_foreign(scope, namespace)
    # An agent service ID is unique per agent only: where several nodes use one ID, the node tells them apart.
    foreign_ids = Counter(records.entry_service_id(e) for e in entries if with_foreign and not records.is_ours(e))
    for entry in entries:
        ours = records.is_ours(entry)
        if (ours and records.scope_of(entry) != scope) or (not ours and not with_foreign):
            continue
        service_id = records.entry_service_id(entry)
        try:
            if ours:
                instance = records.instance_from_health_entry(entry)
            else:
                instance = records.instance_from_foreign_entry(entry, qualify_with_node=foreign_ids[service_id] > 1)
        except ValidationError as error:
            log_skipped(log, f"Consul service {service_id[:160]!r} of {service}", str(error))
            continue
        if instance is not None and instance.namespace == namespace and instance.service == service:
            yield entry, instance


def decode_entries(
    scope: str | None, namespace: str, service: str, entries: list[dict[str, object]]
) -> tuple[Instance, ...]:
    """The instances of one scope and namespace in a health answer (see :func:`decoded_entries`)."""
    return tuple(instance for _, instance in decoded_entries(scope, namespace, service, entries))


class ServiceWatch(AsyncIterator[Snapshot]):
    """The snapshot stream of one ``watch(namespace, service)`` call: blocking queries, one yield per changed set.

    Iterate it; ``aclose()`` (or cancelling the task iterating it) ends it. It ends by itself once the backend is
    closed (its next query fails).
    """

    def __init__(
        self,
        client: ConsulClient,
        scope: str | None,
        namespace: str,
        service: str,
        wait: float,
        is_closed: Callable[[], bool],
    ) -> None:
        self._client = client
        self._scope = scope
        self._namespace = namespace
        self._service = service
        self._wait = wait
        self._is_closed = is_closed
        self._latest: Snapshot | None = None
        self._revision = 0
        self._bucket = TokenBucket(QUERY_RATE, QUERY_BURST, QUERY_JITTER)
        self._snapshots = self._stream()

    def expect_change(self) -> None:
        """This process just wrote the service: query again at once, whatever the rate limit (the limit is for
        changes made by others; our own writes are paced by their callers, who wait to read them back).
        """
        self._bucket.grant()

    async def __anext__(self) -> Snapshot:
        return await anext(self._snapshots)

    async def aclose(self) -> None:
        """End the stream (a blocking query in flight is abandoned)."""
        await self._snapshots.aclose()

    def _changed(self, instances: tuple[Instance, ...], stale: bool) -> Snapshot | None:
        """The new snapshot, or None when it would repeat the last one."""
        latest = self._latest
        if latest is not None and latest.stale == stale and latest.same_members(instances):
            return None
        self._revision += 1
        self._latest = Snapshot(self._service, self._namespace, instances, self._revision, stale)
        return self._latest

    def _stale(self, error: BackendUnavailableError) -> Snapshot | None:
        latest = self._latest
        # Warn once per outage; every retry after that is only debug noise.
        level = logging.DEBUG if latest is not None and latest.stale else logging.WARNING
        log.log(level, "watch of %s/%s: %s; keeping the last set (stale)", self._namespace, self._service, error)
        return self._changed(latest.instances if latest is not None else (), stale=True)

    async def _stream(self) -> AsyncGenerator[Snapshot, None]:
        index = 0
        failures = 0
        while True:
            if not failures:  # retries after an error wait by backoff, not by the bucket
                await self._bucket.take()
            # After a failure, re-list without blocking: the index we held may predate what we missed.
            query_index = 0 if failures else index
            try:
                new_index, entries = await self._client.health_service(
                    self._service, records.query_tag(self._scope, self._namespace), index=query_index, wait=self._wait
                )
            except Exception as error:
                if self._is_closed():
                    return
                if not isinstance(error, BackendUnavailableError):
                    raise
                failures += 1
                stale = self._stale(error)
                if stale is not None:
                    yield stale
                await asyncio.sleep(retry_delay(RETRY_WAIT, failures))
                continue
            failures = 0
            # An index that went backwards (agent restart, snapshot restore) starts over with a re-list.
            index = 0 if new_index < query_index else max(new_index, 1)
            fresh = self._changed(decode_entries(self._scope, self._namespace, self._service, entries), stale=False)
            if fresh is not None:
                yield fresh
