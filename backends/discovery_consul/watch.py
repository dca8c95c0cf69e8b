"""Watching services: one change feed per client, and a non-blocking read of each service that changed.

A :class:`ServiceWatch` is what ``ConsulBackend.watch`` returns: an async iterator of full snapshots, driven by
its consumer (the registry's watch hub, which shares it among every subscriber of the service). The feed it
follows is not a fan-out of snapshots: it only tells each stream when its service changed, so that one blocking
query serves every watched service of a client instead of one per service.

A blocking query parks one HTTP connection, and an agent accepts 200 per client address by default, so one
blocking query per watched service does not scale to thousands of services. Instead :class:`ChangeFeed` follows
one blocking query on ``/v1/health/state/any`` (every check of the datacenter, each with its ``ModifyIndex``)
for all the services a client watches, and wakes the :class:`HealthWatch` of each service whose checks changed
after that watch last read it: a check modified since, or gone. A watch then reads its service once,
non-blocking, on the ordinary connection pool (at most :data:`READ_CONCURRENCY` at a time). A change to a
service that touches none of its checks (a foreign tool rewriting ``Meta`` or the port under the same ID) moves
the feed's index without a changed check; such an unexplained change re-reads the watched services that hold
foreign instances (or none), at most once per :data:`SWEEP_INTERVAL`. Our own writes always touch a check (the
liveness check's notes carry a digest of the record).

Consul's guidance for blocking queries is followed by the feed: pass the last ``X-Consul-Index`` with
``wait``; reset the index to 0 (a plain re-list) when it goes backwards; never pass an index below 1; rate-limit
the loop with a token bucket, since the index moves with every change in the datacenter. On an error every
watch re-publishes its last snapshot ``stale`` and the feed retries with jittered exponential backoff; the first
answer after that wakes every watch for a fresh read.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tenacity import wait_random_exponential

from discovery.core.backoff import retry_delay
from discovery.core.errors import BackendUnavailableError, ValidationError
from discovery.core.foreign import log_skipped
from discovery.core.models import Instance, Snapshot
from discovery.core.tasks import cancel_and_wait
from discovery_consul import records
from discovery_consul.connection import ConsulClient

log = logging.getLogger("discovery.backends.consul.watch")

# At most RATE reads of one service per second after a burst of BURST: bounds the load of a flapping service
# while adding at most 1/RATE seconds to the detection of a change.
QUERY_RATE = 4.0
QUERY_BURST = 4.0
QUERY_JITTER = 0.05
#: Reads of watched services in flight at once, per client (the ordinary pool).
READ_CONCURRENCY = 3
#: Services that changed most recently keep a blocking query of their own (a change then arrives with its
#: answer, one round trip sooner than feed + read); the least recently changed gives its slot up first, and
#: one that has not changed for a whole ``wait`` gives it up by itself. With the feed, the reads and the
#: definitions watches, watching holds at most 8 connections to the agent whatever the number of services.
HOT_SLOTS = 2
#: The feed answers at most this often after a burst (the datacenter's every change moves its index)...
FEED_RATE = 20.0
FEED_BURST = 10.0
#: ... and waits at least this many times the time it spent on its last answer, so that a large datacenter's
#: full check list costs a bounded share of a core.
FEED_BUSY_FACTOR = 4.0
#: Up to this many watched services, the feed asks only for their checks (and the nodes'), so that its answers
#: cost what the watches need rather than what the datacenter holds; beyond it, for every check.
FILTER_LIMIT = 256
#: Watches going cold within this many seconds are added to the feed's selection together (one re-list).
REFILTER_DELAY = 0.02
#: An unexplained change (no check changed) re-reads foreign-holding watches at most this often (seconds).
SWEEP_INTERVAL = 5.0
#: Backoff between retries of a failed feed query or read.
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


CheckKey = tuple[str, str]  # (node, check id)


def _nothing() -> None:
    pass


def _ignore_error(error: BaseException) -> None:
    pass


@dataclass(eq=False)
class Follower:
    """One watched service as the feed sees it: what its last read saw, and how to wake it."""

    service: str
    wake: Callable[[], None]
    stale: Callable[[BaseException], None]
    #: Take its blocking query away (its hot slot went to a service that changed more recently).
    evict: Callable[[], None] = lambda: None
    #: ``X-Consul-Index`` of the last read: a check modified after it is a change the read did not see.
    read_index: int = 0
    #: The service checks (and the nodes) in the last read: one gone since is a change too.
    checks: frozenset[CheckKey] = frozenset()
    nodes: frozenset[str] = frozenset()
    #: Whether the last read held a foreign instance, or none (then only a sweep sees a check-less change).
    sweepable: bool = True
    #: A read is in flight: the feed does not wake the watch for it, but checks its answer when it lands.
    reading: bool = False

    def disarm(self) -> None:
        """Wake nobody any more (its watch has ended) and let go of the watch: the watch holds its follower and the
        follower's callbacks are the watch's methods, a reference cycle per ended watch otherwise."""
        self.wake = self.evict = _nothing
        self.stale = _ignore_error

    def read(self, index: int, entries: list[dict[str, Any]], sweepable: bool) -> None:
        """Record what a read of the service saw."""
        checks: set[CheckKey] = set()
        nodes: set[str] = set()
        for entry in entries:
            node = str((entry.get("Node") or {}).get("Node", ""))
            nodes.add(node)
            for check in entry.get("Checks") or ():
                if check.get("ServiceID"):  # node checks are followed through ``nodes``
                    checks.add((node, str(check.get("CheckID", ""))))
        self.read_index, self.checks, self.nodes, self.sweepable = index, frozenset(checks), frozenset(nodes), sweepable


@dataclass
class _FeedState:
    """The feed's view of the datacenter's checks at its last answer."""

    index: int = 0
    #: service name → {(node, check id): ModifyIndex}; "" holds node checks (no service).
    by_service: dict[str, dict[CheckKey, int]] = field(default_factory=dict)
    #: node → the highest ModifyIndex of its node checks (a critical node check hides its services).
    node_checks: dict[str, int] = field(default_factory=dict)
    keys: frozenset[CheckKey] = frozenset()


class ChangeFeed:
    """Which watched services changed, for every watch of a client (see the module docs).

    A watch is *hot* while it holds one of :data:`HOT_SLOTS` (its own blocking query tells it of changes) and
    *cold* otherwise; the feed's one blocking query on ``/v1/health/state/any`` follows the cold ones, and runs
    only while there is one. A process watching at most :data:`HOT_SLOTS` services therefore makes exactly one
    blocking query per service, and one watching more makes those plus the feed.
    """

    def __init__(self, client: ConsulClient, wait: float) -> None:
        self._client = client
        self._wait = wait
        self._followers: set[Follower] = set()
        self._hot: OrderedDict[Follower, None] = OrderedDict()  # least recently changed first
        self._task: asyncio.Task[None] | None = None
        self._reads = asyncio.Semaphore(READ_CONCURRENCY)
        self._last_sweep = 0.0
        self._cold_changed = asyncio.Event()  # a watch went cold: the query in flight may not select it
        self._state = _FeedState()  # the last answer's

    @property
    def reads(self) -> asyncio.Semaphore:
        """Held by a watch while it reads its service: bounds the connections watching takes."""
        return self._reads

    def follow(self, follower: Follower) -> Callable[[], None]:
        """Follow ``follower`` (cold until it claims a slot); returns a function that stops following it."""
        self._followers.add(follower)
        self._cold_changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="discovery-consul-feed")

        def stop() -> None:
            self._followers.discard(follower)
            self._hot.pop(follower, None)
            if not self._followers and self._task is not None:
                self._task.cancel()
                self._task = None

        return stop

    def claim_hot(self, follower: Follower, *, evict: bool) -> None:
        """Give ``follower`` a hot slot: a free one, or with ``evict`` (its service just changed) the least
        recently changed watch's, which goes cold."""
        if follower in self._hot:
            self._hot.move_to_end(follower)
            return
        if len(self._hot) >= HOT_SLOTS:
            if not evict or not self._hot:
                return
            evicted, _ = self._hot.popitem(last=False)
            evicted.evict()
            self._cold_changed.set()
        self._hot[follower] = None

    def is_hot(self, follower: Follower) -> bool:
        """Whether ``follower`` holds a hot slot."""
        return follower in self._hot

    def release_hot(self, follower: Follower) -> None:
        """Give a hot slot back (no change for a whole ``wait``, an error): the watch is cold again."""
        if follower in self._hot:
            del self._hot[follower]
            self._cold_changed.set()

    async def close(self) -> None:
        """Stop the feed (the backend is closing); every cold stream wakes and ends."""
        for follower in list(self._followers):
            follower.wake()
            follower.evict()
        self._followers.clear()
        self._hot.clear()
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    def read_done(self, follower: Follower) -> None:
        """A read of ``follower``'s service landed: wake it again if the feed's last answer holds a change that the
        read did not see (the feed skipped it while the read was in flight). A feed answer no newer than the read
        has nothing the read missed; the next answer is compared afresh."""
        state = self._state
        if (
            state.index > follower.read_index
            and follower in self._followers
            and follower not in self._hot
            and _needs_read(follower, state)
        ):
            follower.wake()

    def _cold(self) -> list[Follower]:
        return [follower for follower in self._followers if follower not in self._hot]

    async def _run(self) -> None:
        bucket = TokenBucket(FEED_RATE, FEED_BURST, QUERY_JITTER)
        state = _FeedState()
        asked_for: frozenset[str] | None = frozenset()
        failures = 0
        busy = 0.0
        while self._followers:
            if not failures:
                await bucket.take()
                if busy:
                    await asyncio.sleep(busy * FEED_BUSY_FACTOR)
            self._cold_changed.clear()  # before reading who is cold: a change from here on is seen by _query
            cold = self._cold()
            if not cold:
                await self._cold_changed.wait()  # every watch has its own query: nothing to follow
                continue
            names = frozenset(follower.service for follower in cold)
            selects = names if len(names) <= FILTER_LIMIT else None
            # A re-list without blocking after a failure (the index held may predate what was missed) and when the
            # selection grows (a service it did not select may have changed before the index held).
            grew = asked_for is not None and (selects is None or not selects <= asked_for)
            query_index = 0 if failures or grew else state.index
            asked_for = selects
            try:
                answer = await self._query(query_index, selects)
            except BackendUnavailableError as error:
                failures += 1
                for follower in self._cold():
                    follower.stale(error)
                await asyncio.sleep(retry_delay(RETRY_WAIT, failures))
                continue
            if answer is None:
                continue  # a watch went cold meanwhile: ask again with it selected
            new_index, checks = answer
            started = time.monotonic()
            recovered, failures = failures > 0, 0
            previous = state
            state = self._state = _read_checks(checks)
            # An index that went backwards (agent restart, snapshot restore) starts over with a re-list.
            state.index = 0 if new_index < query_index else max(new_index, 1)
            if recovered or new_index < query_index:
                # After an outage every cold watch published stale and reads again; an index that went backwards
                # cannot be compared with what the watches read.
                for follower in self._cold():
                    follower.wake()
            else:
                self._wake_changed(previous, state, self._cold())
            busy = time.monotonic() - started

    async def _query(self, index: int, selects: frozenset[str] | None) -> tuple[int, list[dict[str, Any]]] | None:
        """One feed query; ``None`` if a watch went cold meanwhile (the query was cancelled)."""
        query = asyncio.ensure_future(self._client.health_state(index, self._wait, _filter_for(selects)))
        try:
            while not query.done():
                cold_changed = asyncio.ensure_future(self._cold_changed.wait())
                try:
                    await asyncio.wait({query, cold_changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    cold_changed.cancel()
                if query.done():
                    break
                await asyncio.sleep(REFILTER_DELAY)  # more watches may go cold at once (many starting)
                self._cold_changed.clear()
                cold = self._cold()
                if not cold or (selects is not None and not {f.service for f in cold} <= selects):
                    await _cancelled(query)
                    return None  # ask again: for a newly cold watch, or not at all
            return query.result()
        except BaseException:
            await _cancelled(query)  # our own cancellation: leave no query behind
            raise

    def _wake_changed(self, previous: _FeedState, state: _FeedState, cold: list[Follower]) -> None:
        explained = state.keys != previous.keys or any(
            modified > previous.index for checks in state.by_service.values() for modified in checks.values()
        )
        now = time.monotonic()
        sweep = not explained and state.index != previous.index and now - self._last_sweep >= SWEEP_INTERVAL
        if sweep:
            self._last_sweep = now
        for follower in cold:
            # A watch whose read is in flight is not woken: when the read lands, read_done() compares it with
            # the state at that time (at start-up the first answer would otherwise make every watch read twice).
            if not follower.reading and (_needs_read(follower, state) or (sweep and follower.sweepable)):
                follower.wake()


def _needs_read(follower: Follower, state: _FeedState) -> bool:
    """Whether ``state`` shows a change to ``follower``'s service that its last read did not see."""
    checks = state.by_service.get(follower.service, {})
    return (
        any(modified > follower.read_index for modified in checks.values())
        or not follower.checks <= checks.keys()
        or any(state.node_checks.get(node, 0) > follower.read_index for node in follower.nodes)
    )


async def _cancelled(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, without taking its outcome; a cancellation of the caller
    meanwhile is raised (``asyncio.wait`` raises only that, never the task's own error)."""
    task.cancel()
    try:
        await asyncio.wait({task})
    finally:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning


def _filter_for(services: frozenset[str] | None) -> str | None:
    """Consul's filter selecting the checks of ``services`` and node checks (``None``: every check).

    Watched names are DNS labels (letters, digits, ``-``): nothing in them needs escaping in the expression.
    """
    if services is None:
        return None
    alternatives = "|".join(sorted(services)) or "-"  # "-" names no service: only node checks
    return f'ServiceName == "" or ServiceName matches "^(?:{alternatives})$"'


def _read_checks(checks: list[dict[str, Any]]) -> _FeedState:
    state = _FeedState()
    keys: set[CheckKey] = set()
    for check in checks:
        node = str(check.get("Node", ""))
        key = (node, str(check.get("CheckID", "")))
        keys.add(key)
        modified = int(check.get("ModifyIndex") or 0)
        service = str(check.get("ServiceName") or "")
        state.by_service.setdefault(service, {})[key] = modified
        if not service:
            state.node_checks[node] = max(state.node_checks.get(node, 0), modified)
    state.keys = frozenset(keys)
    return state


class ServiceWatch(AsyncIterator[Snapshot]):
    """The snapshot stream of one ``watch(namespace, service)`` call: a read now, then one each time its service
    changed (told by the feed while cold, by its own blocking query while hot), one yield per changed set.

    Iterate it; ``aclose()`` (or cancelling the task iterating it) ends it. It ends by itself once the backend is
    closed (its next query fails).
    """

    def __init__(
        self,
        client: ConsulClient,
        feed: ChangeFeed,
        scope: str | None,
        namespace: str,
        service: str,
        wait: float,
        is_closed: Callable[[], bool],
        before_first_read: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._client = client
        # The backend's read-your-writes: the first read waits until the catalog shows this process's writes.
        self._before_first_read = before_first_read
        self._feed = feed
        self._scope = scope
        self._namespace = namespace
        self._service = service
        self._wait = wait
        self._is_closed = is_closed
        self._latest: Snapshot | None = None
        self._revision = 0
        self._wake = asyncio.Event()
        self._evicted = asyncio.Event()
        self._feed_error: BaseException | None = None
        self._follower = Follower(service, self._wake.set, self._on_feed_error, self._evicted.set)
        self._bucket = TokenBucket(QUERY_RATE, QUERY_BURST, QUERY_JITTER)
        self._snapshots = self._stream()

    def expect_change(self) -> None:
        """This process just wrote the service: read it again at once, whatever the rate limit (the limit is for
        changes made by others; our own writes are paced by their callers, who wait to read them back). A cold
        stream reads without waiting for the feed; a hot one's own blocking query answers with the change.
        """
        self._bucket.grant()
        if not self._feed.is_hot(self._follower):
            self._wake.set()

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

    def _stale(self, error: BaseException) -> Snapshot | None:
        latest = self._latest
        # Warn once per outage; every retry after that is only debug noise.
        level = logging.DEBUG if latest is not None and latest.stale else logging.WARNING
        log.log(level, "watch of %s/%s: %s; keeping the last set (stale)", self._namespace, self._service, error)
        return self._changed(latest.instances if latest is not None else (), stale=True)

    def _on_feed_error(self, error: BaseException) -> None:
        self._feed_error = error
        self._wake.set()

    async def _stream(self) -> AsyncGenerator[Snapshot, None]:
        bucket = self._bucket
        stop_following = self._feed.follow(self._follower)
        try:
            must_read, first, failures = True, True, 0
            while True:
                if must_read:
                    try:
                        fresh = await self._read()
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
                    must_read, failures = False, 0
                    if fresh is not None:
                        yield fresh
                    self._evicted.clear()
                    # A free hot slot for a new watch; the one changed least recently's for a service that changed.
                    self._feed.claim_hot(self._follower, evict=not first and fresh is not None)
                    first = False
                    continue
                if self._feed.is_hot(self._follower):
                    outcome = await self._hot_query()
                    if outcome is _CLOSED:
                        return
                    if outcome is _GIVE_UP:
                        self._feed.release_hot(self._follower)
                        must_read = self._wake.is_set()  # an error or a reset: read the cold way
                    elif isinstance(outcome, Snapshot):
                        yield outcome
                    await bucket.take()
                    continue
                await self._wake.wait()
                self._wake.clear()
                if self._is_closed():
                    return
                feed_error, self._feed_error = self._feed_error, None
                if feed_error is not None:  # the feed is down: this set may be out of date
                    stale = self._stale(feed_error)
                    if stale is not None:
                        yield stale
                    continue
                await bucket.take()
                must_read = True
        finally:
            stop_following()
            self._follower.disarm()

    async def _read(self) -> Snapshot | None:
        """Read the service once (non-blocking); the new snapshot, or None if its set did not change."""
        # A feed error told before this read is answered by it: applied after a read that succeeded (the agent came
        # back while this watch retried), it marked the fresh set stale, and the feed's wake-up after its recovery
        # had already been used up by this read, so the set stayed stale until the next change.
        self._feed_error = None
        self._follower.reading = True
        try:
            if self._before_first_read is not None:
                await self._before_first_read()
                self._before_first_read = None
            async with self._feed.reads:
                index, entries = await self._client.health_service(
                    self._service, records.query_tag(self._scope, self._namespace)
                )
        finally:
            self._follower.reading = False
        snapshot = self._apply(index, entries)
        self._feed.read_done(self._follower)
        return snapshot

    async def _hot_query(self) -> Snapshot | object | None:
        """One blocking query from the last read's index: the new snapshot (None: same set), :data:`_GIVE_UP` when
        the slot should go (taken by another service, a whole ``wait`` without a change, an error or an index that
        went backwards, which also set ``_wake`` to read the cold way), or :data:`_CLOSED`."""
        query = asyncio.ensure_future(self._client.health_service(
            self._service, records.query_tag(self._scope, self._namespace), index=max(self._follower.read_index, 1),
            wait=self._wait,
        ))
        evicted = asyncio.ensure_future(self._evicted.wait())
        try:
            await asyncio.wait({query, evicted}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await _cancelled(query)  # our own cancellation: leave no query behind
            raise
        finally:
            evicted.cancel()
        if not query.done():
            await _cancelled(query)
            return _GIVE_UP
        # Looked at, not raised here: raised through this frame, the error's traceback would hold the frame, which
        # holds the query, which holds the error (a reference cycle per failed query).
        error = query.exception()
        if error is not None:
            if self._is_closed():
                return _CLOSED
            if not isinstance(error, BackendUnavailableError):
                raise error
            self._wake.set()  # read again the cold way, with its retries and stale handling
            return _GIVE_UP
        index, entries = query.result()
        if index == self._follower.read_index:
            return _GIVE_UP  # a whole wait without a change
        if index < self._follower.read_index:
            self._wake.set()  # went backwards (agent restart): a plain re-list
            return _GIVE_UP
        self._wake.clear()  # the feed's news of this change, if any, is answered
        return self._apply(index, entries)

    def _apply(self, index: int, entries: list[dict[str, Any]]) -> Snapshot | None:
        instances = decode_entries(self._scope, self._namespace, self._service, entries)
        foreign = any(not records.is_ours(entry) for entry in entries)
        self._follower.read(index, entries, sweepable=foreign or not entries)
        return self._changed(instances, stale=False)


_GIVE_UP = object()
_CLOSED = object()
