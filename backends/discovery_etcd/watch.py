"""Revision-exact service watches: one etcd watch stream per service prefix, shared by its subscribers.

A :class:`ServiceWatch` lists ``<target>/`` at revision R and watches from R+1, so no change falls between
the read and the watch. When the stream breaks it keeps the last set and publishes it with ``stale=True``,
reconnects with jittered backoff (tenacity) and resumes the watch from the last applied revision + 1. If
etcd's revision moved meanwhile it also re-lists (the contract's "re-list once back") and skips replayed
events the list already covers, so the first fresh snapshot is already complete. A compacted resume
revision makes etcd cancel the watch: the set is re-listed and delivered whole.

The watch stream is driven through aetcd's generated gRPC stub rather than ``aetcd.Client.watch``; see
docs/decisions/etcd-watch-stream.md for why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aetcd import rpc
from aetcd.utils import prefix_range_end
from grpc.aio import EOF  # type: ignore[import-untyped]
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from discovery.core.errors import BackendUnavailableError, DiscoveryError
from discovery.core.models import Instance, Snapshot
from discovery_etcd.connection import EndpointPool, is_connection_error, is_stale_token
from discovery_etcd.layout import KeyLayout
from discovery_etcd.records import decode_endpoint_cached

log = logging.getLogger(__name__)

_EVENT_PUT = 0


class _StreamLost(Exception):
    """The watch stream ended or failed; reconnect."""


class _Compacted(Exception):
    """etcd no longer holds the revision to resume from; re-list."""


def _refused_for_stale_token(response: Any, client: Any) -> bool:
    """etcd cancels a watch whose auth token it no longer knows (it restarted) as "permission denied"; a real
    denial stays denied after logging in again, so renewing the client on that answer costs only one login.
    """
    if response is None or response is EOF or not response.canceled or not client.metadata:
        return False
    reason = str(response.cancel_reason)
    return is_stale_token(Exception(reason)) or "permission denied" in reason


def _should_reconnect(error: BaseException) -> bool:
    return isinstance(error, _StreamLost | BackendUnavailableError) or is_connection_error(error)


class Subscription:
    """One subscriber's view: only the latest snapshot is kept, so slow readers see bursts coalesced."""

    def __init__(self) -> None:
        self._latest: Snapshot | None = None
        self._failure: BaseException | None = None
        self._ready = asyncio.Event()

    def offer(self, snapshot: Snapshot) -> None:
        """Replace the pending snapshot."""
        self._latest = snapshot
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        """End the subscription with an error."""
        self._failure = error
        self._ready.set()

    async def next(self) -> Snapshot:
        """Wait for the next snapshot."""
        await self._ready.wait()
        self._ready.clear()
        if self._failure is not None:
            raise self._failure
        assert self._latest is not None
        return self._latest


class ServiceWatch:
    """The shared watch of one service prefix."""

    def __init__(
        self,
        pool: EndpointPool,
        layout: KeyLayout,
        namespace: str,
        service: str,
        on_idle: Callable[[ServiceWatch], None],
    ) -> None:
        self.namespace = namespace
        self.service = service
        self._pool = pool
        self._layout = layout
        self._prefix = layout.service_prefix(namespace, service)
        self._on_idle = on_idle
        self._members: dict[bytes, Instance] = {}
        self._revision = 0
        self._listed = False
        self._stale = False
        self._current: Snapshot | None = None
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._call: Any = None
        #: Loop time of the last response on the stream, and whether the probe gave up on it.
        self._answered_at = 0.0
        self._probe_failed = False
        self._call_client: Any = None
        #: How many times the set was (re-)listed; tests use it to see a re-list after compaction.
        self.list_count = 0
        #: How many watch streams were opened with a resume revision (after a loss).
        self.resume_count = 0
        #: How many times etcd cancelled the watch because its start revision was compacted.
        self.compacted_count = 0

    @property
    def current(self) -> Snapshot | None:
        """The last published snapshot."""
        return self._current

    @property
    def revision(self) -> int:
        """The etcd revision the published set reflects."""
        return self._revision

    def subscribe(self) -> Subscription:
        """Add a subscriber; it gets the current snapshot (if any) at once."""
        subscription = Subscription()
        self._subscribers.add(subscription)
        if self._current is not None:
            subscription.offer(self._current)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"etcd-watch-{self.namespace}/{self.service}"
            )
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a subscriber; the last one leaving stops the stream."""
        self._subscribers.discard(subscription)
        if not self._subscribers:
            self._on_idle(self)
            await self.stop()

    async def stop(self) -> None:
        """Stop the stream (subscribers still waiting are left waiting; the caller ends them)."""
        task, self._task = self._task, None
        self._cancel_call()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def fail_all(self, error: BaseException) -> None:
        """End every subscription with ``error``."""
        for subscription in list(self._subscribers):
            subscription.fail(error)

    def _publish(self) -> None:
        snapshot = Snapshot(
            service=self.service,
            namespace=self.namespace,
            instances=tuple(self._members.values()),
            revision=self._revision,
            stale=self._stale,
        )
        self._current = snapshot
        for subscription in list(self._subscribers):
            subscription.offer(snapshot)

    def _mark_stale(self, state: RetryCallState | None = None) -> None:
        if not self._stale and self._listed:
            self._stale = True
            self._publish()

    def _cancel_call(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    async def _run(self) -> None:
        try:
            while True:
                retrying = AsyncRetrying(
                    retry=retry_if_exception(_should_reconnect),
                    wait=wait_random_exponential(multiplier=0.05, max=2.0),
                    before_sleep=self._mark_stale,
                    reraise=True,
                )
                try:
                    async for attempt in retrying:
                        with attempt:
                            await self._connect()
                    await self._follow()
                except _Compacted:
                    self.compacted_count += 1
                    log.info("etcd watch of %s resumed below the compaction point; re-listing", self._prefix)
                    self._listed = False
                except Exception as error:
                    if not _should_reconnect(error):
                        raise
                    self._mark_stale()
                finally:
                    self._cancel_call()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug or a refusal (permissions): tell the subscribers instead of hanging
            log.exception("etcd watch of %s failed", self._prefix)
            wrapped = error if isinstance(error, DiscoveryError) else BackendUnavailableError(
                f"watching {self.namespace}/{self.service} on etcd failed: {error}"
            )
            self.fail_all(wrapped)

    async def _list(self) -> None:
        result = await self._pool.call("list a service", lambda client: client.get_prefix(self._prefix))
        members: dict[bytes, Instance] = {}
        for kv in result:
            instance = self._decode(kv.key, kv.value)
            if instance is not None:
                members[kv.key] = instance
        self._members = members
        self._revision = int(result.header.revision)
        self._listed = True
        self.list_count += 1

    def _decode(self, key: bytes, value: bytes) -> Instance | None:
        parsed = self._layout.parse(key)
        if parsed is None or parsed[:2] != (self.namespace, self.service):
            return None
        return decode_endpoint_cached(value, *parsed)

    async def _connect(self) -> None:
        resuming = self._listed
        if not resuming:
            await self._list()
            self._stale = False
            self._publish()
        client = await self._pool.client()
        try:
            call = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
            self._call = call
            self._call_client = client
            create = rpc.WatchCreateRequest(
                key=self._prefix,
                range_end=prefix_range_end(self._prefix),
                start_revision=self._revision + 1,
                progress_notify=True,
            )
            async with asyncio.timeout(self._pool.timeout):
                await call.write(rpc.WatchRequest(create_request=create))
                created = await call.read()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and not task.cancelling():
                raise _StreamLost("the watch call was cancelled under us (its channel closed)") from None
            raise
        except Exception as error:
            if is_connection_error(error):
                await self._pool.report_failure(client)
                raise _StreamLost(str(error)) from error
            raise
        if _refused_for_stale_token(created, client):
            await self._pool.renew(client)
        self._check_created(created)
        if resuming:
            self.resume_count += 1
            if int(created.header.revision) < self._revision:
                # etcd's history went backwards (data wiped, or restored from an older snapshot): a watch from
                # our old revision would skip every change until the new history reaches it. Start over.
                self._cancel_call()
                self._listed = False
                raise _StreamLost("etcd's revision went backwards; re-listing")
            if int(created.header.revision) > self._revision:
                # Something changed while we were away: re-read now; replayed events up to this read's
                # revision are skipped in _apply because they are already in the listed set.
                await self._list()
            if self._stale:
                self._stale = False
                self._publish()

    def _check_created(self, response: Any) -> None:
        if response is None or response is EOF:
            raise _StreamLost("the watch stream closed before it was created")
        if int(response.compact_revision) != 0:
            raise _Compacted
        if not response.created or response.canceled:
            raise BackendUnavailableError(
                f"etcd refused to watch {self._prefix.decode()}: {response.cancel_reason or 'canceled'}"
            )

    async def _follow(self) -> None:
        call = self._call
        self._answered_at = asyncio.get_running_loop().time()
        self._probe_failed = False
        prober = asyncio.create_task(self._probe(call), name=f"etcd-watch-probe-{self.namespace}/{self.service}")
        try:
            while True:
                response = await call.read()
                self._answered_at = asyncio.get_running_loop().time()
                if response is EOF:
                    raise _StreamLost("the watch stream ended")
                if int(response.compact_revision) != 0:
                    raise _Compacted
                if response.canceled:
                    raise _StreamLost(f"etcd canceled the watch: {response.cancel_reason}")
                if self._apply(response):
                    self._publish()
        except (_StreamLost, _Compacted):
            raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and not task.cancelling():
                # The call was cancelled, not this task (grpc.aio reports that as CancelledError): by the probe, or
                # by the pool closing the call's channel when another request on it failed over. Reconnect; the
                # task ending here instead would leave every subscriber waiting, never told the stream is gone.
                if self._probe_failed:
                    raise _StreamLost(
                        f"etcd did not answer a progress request within {self._pool.timeout:g} s"
                    ) from None
                raise _StreamLost("the watch call was cancelled under us (its channel closed)") from None
            raise
        except Exception as error:
            if is_connection_error(error):
                await self._pool.report_failure(self._call_client)
                raise _StreamLost(str(error)) from error
            raise
        finally:
            prober.cancel()
            await asyncio.gather(prober, return_exceptions=True)

    async def _probe(self, call: Any) -> None:
        """After a quiet ``timeout`` ask etcd for progress on the stream; no answer within another ``timeout``
        means the stream is dead: cancel the call. A silent partition would otherwise go unnoticed, and the
        snapshot unmarked stale, until gRPC's keepalive gives up after about 15 s.
        """
        loop = asyncio.get_running_loop()
        timeout = self._pool.timeout
        while True:
            await asyncio.sleep(timeout)
            if loop.time() - self._answered_at < timeout:
                continue
            asked = loop.time()
            try:
                async with asyncio.timeout(timeout):
                    await call.write(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
            except Exception as error:  # any failure to ask ends the stream the same way
                log.debug("etcd watch progress request failed: %r", error)
            await asyncio.sleep(max(0.0, asked + timeout - loop.time()))
            if self._answered_at < asked:
                self._probe_failed = True
                call.cancel()
                return

    def _apply(self, response: Any) -> bool:
        changed = False
        if not response.events:
            # A progress notification: etcd sends them only to watchers that are caught up.
            self._revision = max(self._revision, int(response.header.revision))
            return False
        for event in response.events:
            revision = int(event.kv.mod_revision)
            if revision <= self._revision:
                continue
            key = bytes(event.kv.key)
            if event.type == _EVENT_PUT:
                instance = self._decode(key, bytes(event.kv.value))
                if instance is not None:
                    changed |= self._members.get(key) != instance
                    self._members[key] = instance
                    continue
            changed |= self._members.pop(key, None) is not None
        self._revision = max(self._revision, *(int(event.kv.mod_revision) for event in response.events))
        return changed


async def iterate(watch: ServiceWatch, timeout: float) -> AsyncIterator[Snapshot]:
    """Yield a shared watch's snapshots for one subscriber, unsubscribing when the consumer stops."""
    subscription = watch.subscribe()
    try:
        try:
            async with asyncio.timeout(timeout):
                first = await subscription.next()
        except TimeoutError:
            raise BackendUnavailableError(
                f"could not watch {watch.namespace}/{watch.service}: etcd did not answer in time"
            ) from None
        yield first
        while True:
            yield await subscription.next()
    finally:
        await watch.unsubscribe(subscription)
