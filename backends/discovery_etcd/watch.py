"""Revision-exact service watches: one etcd watch stream per ``watch()`` call.

A :class:`ServiceWatch` is what ``EtcdBackend.watch`` returns: an async iterator of full snapshots, driven by
its consumer (the registry's watch hub, which shares it among every subscriber of the service; there is no
sharing here). It lists ``<target>/`` at revision R and watches from R+1, so no change falls between the read
and the watch. When the stream breaks it yields the last set with ``stale=True``, reconnects and resumes the
watch from the last applied revision + 1. If etcd's revision moved meanwhile it also re-lists (the contract's
"re-list once back") and skips replayed events the list already covers, so the first fresh snapshot is already
complete. A compacted resume revision makes etcd cancel the watch: the set is re-listed and delivered whole.
Reconnect attempts are spaced by jittered exponential backoff (tenacity's strategy; the loop is ours because it
yields the stale snapshot between attempts).

The watch stream is driven through aetcd's generated gRPC stub rather than ``aetcd.Client.watch``; see
docs/decisions/etcd-watch-stream.md for why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from aetcd import rpc
from aetcd.utils import prefix_range_end
from grpc.aio import EOF  # type: ignore[import-untyped]
from tenacity import wait_random_exponential

from discovery.core.backoff import retry_delay
from discovery.core.errors import BackendUnavailableError, ClosedError, DiscoveryError
from discovery.core.models import Instance, Snapshot
from discovery_etcd.connection import EndpointPool, is_connection_error, is_stale_token
from discovery_etcd.layout import KeyLayout
from discovery_etcd.records import decode_endpoint_cached

log = logging.getLogger("discovery.backends.etcd.watch")

_EVENT_PUT = 0
#: Backoff between failed attempts to reopen the stream (the first attempt after a loss is immediate).
RECONNECT_WAIT = wait_random_exponential(multiplier=0.05, max=2.0)


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


def _cancelled_by_us() -> bool:
    """Whether the running task is being cancelled, as opposed to a gRPC call cancelled under it (grpc.aio
    reports a cancelled call as ``CancelledError`` in the task reading it).
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class ServiceWatch(AsyncIterator[Snapshot]):
    """The snapshot stream of one ``watch(namespace, service)`` call: the current set, then one per change.

    Iterate it; ``aclose()`` (or cancelling the task iterating it) ends the etcd watch stream. Once the backend
    is closed the stream raises :class:`ClosedError`.
    """

    def __init__(
        self, pool: EndpointPool, layout: KeyLayout, namespace: str, service: str, is_closed: Callable[[], bool]
    ) -> None:
        self.namespace = namespace
        self.service = service
        self._pool = pool
        self._layout = layout
        self._prefix = layout.service_prefix(namespace, service)
        self._is_closed = is_closed
        self._members: dict[bytes, Instance] = {}
        self._revision = 0
        self._listed = False
        self._stale = False
        self._yielded: Snapshot | None = None
        self._call: Any = None
        self._call_client: Any = None
        #: Loop time of the last response on the stream, and whether the probe gave up on it.
        self._answered_at = 0.0
        self._probe_failed = False
        #: How many times the set was (re-)listed.
        self.list_count = 0
        #: How many watch streams were opened with a resume revision (after a loss).
        self.resume_count = 0
        #: How many times etcd cancelled the watch because its start revision was compacted.
        self.compacted_count = 0
        #: Test seam: awaited before every attempt to reopen the watch stream after a loss, so a test can hold the
        #: reconnect and change etcd while this watch is away. ``None`` in production.
        self.before_reconnect: Callable[[], Awaitable[None]] | None = None
        self._snapshots = self._stream()

    @property
    def revision(self) -> int:
        """The etcd revision this stream has applied (progress notifications included)."""
        return self._revision

    async def __anext__(self) -> Snapshot:
        return await anext(self._snapshots)

    async def aclose(self) -> None:
        """End the stream (cancels its etcd watch call)."""
        await self._snapshots.aclose()

    async def _stream(self) -> AsyncGenerator[Snapshot, None]:
        try:
            # The first snapshot as soon as the list answers (BackendUnavailableError if etcd does not answer
            # within the timeout); its watch stream starts at the list's revision + 1.
            await self._list()
            yield self._sent(self._snapshot())
            reconnecting = False
            failures = 0  # attempts to open the stream that failed in a row
            while True:
                opened = lost = False
                try:
                    await self._open(reconnecting)
                    opened, failures = True, 0
                    fresh = self._snapshot()
                    if self._differs(fresh):
                        yield self._sent(fresh)
                    prober = self._start_probe()
                    try:
                        while True:
                            if await self._next_change():
                                yield self._sent(self._snapshot())
                    finally:
                        prober.cancel()
                        await asyncio.gather(prober, return_exceptions=True)
                except _Compacted:
                    self.compacted_count += 1
                    log.info("etcd watch of %s resumed below the compaction point; re-listing", self._prefix)
                    self._listed = False
                except Exception as error:
                    if not _should_reconnect(error) or self._is_closed():
                        raise
                    lost = True
                self._cancel_call()
                reconnecting = True
                if lost and self._listed and not self._stale:
                    self._stale = True
                    yield self._sent(self._snapshot())
                if lost and not opened:
                    failures += 1
                    await asyncio.sleep(retry_delay(RECONNECT_WAIT, failures))
        except Exception as error:
            final = self._final_error(error)
            if final is error:
                raise
            raise final from error
        finally:
            self._cancel_call()

    def _final_error(self, error: Exception) -> DiscoveryError:
        if self._is_closed():
            return ClosedError("the etcd backend is closed")
        if isinstance(error, DiscoveryError):
            return error
        # A bug or a refusal (permissions): the consumer hears of it instead of hanging.
        log.error("etcd watch of %s failed", self._prefix, exc_info=error)
        return BackendUnavailableError(f"watching {self.namespace}/{self.service} on etcd failed: {error}")

    def _snapshot(self) -> Snapshot:
        return Snapshot(
            service=self.service,
            namespace=self.namespace,
            instances=tuple(self._members.values()),
            revision=self._revision,
            stale=self._stale,
        )

    def _differs(self, snapshot: Snapshot) -> bool:
        last = self._yielded
        return last is None or last.stale != snapshot.stale or not last.same_members(snapshot)

    def _sent(self, snapshot: Snapshot) -> Snapshot:
        self._yielded = snapshot
        return snapshot

    def _cancel_call(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

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

    async def _open(self, reconnecting: bool) -> None:
        """Open a watch stream from the next revision (listing first if needed); the set is fresh once it is open.

        After a loss the stream resumes from the last applied revision + 1, and re-lists if etcd moved meanwhile.
        """
        self._cancel_call()  # a stream a failed attempt left open
        if reconnecting and self.before_reconnect is not None:
            await self.before_reconnect()
        resuming = reconnecting and self._listed
        if not self._listed:
            await self._list()
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
            if _cancelled_by_us():
                raise
            raise _StreamLost("the watch call was cancelled under us (its channel closed)") from None
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
        self._stale = False

    def _check_created(self, response: Any) -> None:
        if response is None or response is EOF:
            raise _StreamLost("the watch stream closed before it was created")
        if int(response.compact_revision) != 0:
            raise _Compacted
        if not response.created or response.canceled:
            raise BackendUnavailableError(
                f"etcd refused to watch {self._prefix.decode()}: {response.cancel_reason or 'canceled'}"
            )

    async def _next_change(self) -> bool:
        """Read and apply one watch response; whether the set changed."""
        try:
            response = await self._call.read()
        except asyncio.CancelledError:
            if _cancelled_by_us():
                raise
            if self._probe_failed:
                raise _StreamLost(f"etcd did not answer a progress request within {self._pool.timeout:g} s") from None
            raise _StreamLost("the watch call was cancelled under us (its channel closed)") from None
        except Exception as error:
            if is_connection_error(error):
                await self._pool.report_failure(self._call_client)
                raise _StreamLost(str(error)) from error
            raise
        self._answered_at = asyncio.get_running_loop().time()
        if response is EOF:
            raise _StreamLost("the watch stream ended")
        if int(response.compact_revision) != 0:
            raise _Compacted
        if response.canceled:
            raise _StreamLost(f"etcd canceled the watch: {response.cancel_reason}")
        return self._apply(response)

    def _start_probe(self) -> asyncio.Task[None]:
        self._answered_at = asyncio.get_running_loop().time()
        self._probe_failed = False
        return asyncio.create_task(self._probe(self._call), name=f"etcd-watch-probe-{self.namespace}/{self.service}")

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
