"""Revision-exact service watches: one etcd watch stream per ``watch()`` call, or one per namespace read.

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

Three things are shared by the streams of one backend, for scale (thousands of watched services): one liveness
probe (:class:`StreamProbe`) instead of one task per stream; the first reads (:class:`Lister`): streams that
list in the same loop iteration are answered by one read of their namespace when there are many of them; and the
watch that follows such a read (:class:`NamespaceStream`): one etcd watch of the namespace from that read's
revision + 1 hands each of those streams the events of its service, instead of one etcd watch stream each.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
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


class _ProbedCall:
    """An etcd watch call the probe looks after (a service's own stream, or a namespace watch): which client it is
    on, a progress request on it, and giving up on it."""

    _call: Any
    _client: Any
    _probe_failed: bool

    @property
    def client_id(self) -> int:
        """Which client (connection) the call is on, for the probe."""
        return id(self._client)

    async def ask_progress(self, timeout: float) -> None:
        """Ask etcd for progress on the call (the probe's question for its whole client); a failure to ask shows as
        no answer."""
        call = self._call
        if call is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await call.write(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
        except Exception as error:
            log.debug("etcd watch progress request failed: %r", error)

    def probe_failed(self) -> None:
        """The probe got no answer on the call's client: end the call (its streams reconnect)."""
        self._probe_failed = True
        if self._call is not None:
            self._call.cancel()


class StreamProbe:
    """The liveness probe of every watch stream of a backend.

    After a quiet ``timeout`` on a client (no response on any of its streams) it asks etcd for progress on one of
    them; no answer within another ``timeout`` means that client's connection is dead: every stream on it is
    cancelled, and reconnects. A silent partition would otherwise go unnoticed, and the snapshots unmarked stale,
    until gRPC's keepalive gives up after about 15 s. One task and one request per client, whatever the number of
    streams: a probe per stream asked etcd 5 000 times per ``timeout`` with 5 000 services watched and idle.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._streams: dict[_ProbedCall, None] = {}  # open streams, in the order they opened
        self._answered: dict[int, float] = {}  # id(client) → loop time of its last response on any stream
        self._task: asyncio.Task[None] | None = None
        #: How many progress requests it sent (diagnostics and tests).
        self.progress_requests = 0

    def add(self, stream: _ProbedCall) -> None:
        """Probe ``stream``'s client from now on (the stream just opened)."""
        self._streams[stream] = None
        self.answered(stream.client_id)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="etcd-watch-probe")

    def remove(self, stream: _ProbedCall) -> None:
        """Stop probing for ``stream`` (it closed or lost its call)."""
        self._streams.pop(stream, None)
        if not self._streams and self._task is not None:
            self._task.cancel()
            self._task = None

    def answered(self, client_id: int) -> None:
        """A response arrived on a stream of this client."""
        self._answered[client_id] = asyncio.get_running_loop().time()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self._timeout
        while self._streams:
            await asyncio.sleep(timeout)
            now = loop.time()
            asked: dict[int, float] = {}
            for stream in list(self._streams):
                client_id = stream.client_id
                if client_id in asked or now - self._answered.get(client_id, now) < timeout:
                    continue
                asked[client_id] = now
                self.progress_requests += 1
                await stream.ask_progress(timeout)
            if not asked:
                continue
            await asyncio.sleep(max(0.0, now + timeout - loop.time()))
            for stream in list(self._streams):
                client_id = stream.client_id
                if client_id in asked and self._answered.get(client_id, 0.0) < asked[client_id]:
                    stream.probe_failed()
            self._answered = {cid: t for cid, t in self._answered.items() if cid not in asked}


#: A stream waiting for its list, and the stream itself when it may share a namespace watch.
_Asking = tuple["asyncio.Future[tuple[list[Any], int]]", "ServiceWatch | None"]
#: At least this many streams waiting to list one namespace are answered by one read of it.
BULK_LIST_MIN = 16
#: Reads in flight at once per backend. Thousands of watches starting together would otherwise send thousands of
#: linearizable reads at once, which etcd 3.4 queues behind one read index each (and under that load, crashed here);
#: those waiting meanwhile are answered together, by one namespace read when there are enough of them.
LIST_CONCURRENCY = 32
#: A namespace read is paged (all pages at the first page's revision): gRPC refuses answers over 4 MiB, and
#: 50 000 instances are ~14 MB.
LIST_PAGE = 2000


class Lister:
    """The lists of the watch streams of a backend: one read per service, or, when many streams of a namespace
    wait to list (a process starting to watch thousands of services, or re-listing them all after an outage),
    one read of the namespace, split by service (all at one revision, as a raw client would list them). At most
    :data:`LIST_CONCURRENCY` reads are in flight; the streams asking meanwhile wait and are answered together.

    While a namespace is being read, the streams of that namespace asking meanwhile wait for it to end and are
    answered together by the next read: a process subscribing to 5 000 services one call after another otherwise
    started a namespace read (of all 50 000 keys) every few milliseconds, 9-21 of them per sync.

    The streams that a namespace read lists, and that asked to share (``sharer``), are followed from then on by
    one :class:`NamespaceStream` from that read's revision + 1, attached before they hear the answer."""

    def __init__(self, pool: EndpointPool, layout: KeyLayout, probe: StreamProbe) -> None:
        self._pool = pool
        self._layout = layout
        self._probe = probe
        self._waiting: dict[str, dict[str, list[_Asking]]] = {}
        self._reading: set[str] = set()  # the namespaces being read
        self._planned = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # the reads in flight (a task nobody holds may be collected)
        #: Reads made so far: of one service, of a whole namespace (diagnostics and tests).
        self.service_reads = 0
        self.namespace_reads = 0
        #: Namespace watches opened for the streams of a namespace read (diagnostics and tests).
        self.namespace_streams = 0

    async def read(self, namespace: str, service: str, sharer: ServiceWatch | None = None) -> tuple[list[Any], int]:
        """The key-values of one service and the revision they were read at. A ``sharer`` listed by a read of
        its namespace is attached to that read's :class:`NamespaceStream` by the time this returns."""
        loop = asyncio.get_running_loop()
        listed: asyncio.Future[tuple[list[Any], int]] = loop.create_future()
        self._waiting.setdefault(namespace, {}).setdefault(service, []).append((listed, sharer))
        if not self._planned:
            self._planned = True
            loop.call_soon(self._flush)
        return await listed

    def _flush(self) -> None:
        self._planned = False
        loop = asyncio.get_running_loop()
        for namespace in list(self._waiting):
            if namespace in self._reading:
                continue  # asked for after the read began: answered by the next one, when it ends
            services = self._waiting[namespace]
            if len(services) >= BULK_LIST_MIN:
                if self._in_flight >= LIST_CONCURRENCY:
                    continue
                del self._waiting[namespace]
                self._reading.add(namespace)
                self._start(loop.create_task(self._read_namespace(namespace, services)))
                continue
            for service in list(services):
                if self._in_flight >= LIST_CONCURRENCY:
                    return  # the rest waits for a read to end; more may gather for one namespace read meanwhile
                self._start(loop.create_task(self._read_service(namespace, service, services.pop(service))))
            if not services:
                del self._waiting[namespace]

    def _start(self, task: asyncio.Task[None]) -> None:
        self._in_flight += 1
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _done(self) -> None:
        self._in_flight -= 1
        if self._waiting and not self._planned:
            self._planned = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _read_service(self, namespace: str, service: str, asking: list[_Asking]) -> None:
        prefix = self._layout.service_prefix(namespace, service)
        self.service_reads += 1
        futures = [future for future, _ in asking]
        try:
            result = await self._pool.call("list a service", lambda client: client.get_prefix(prefix))
        except BaseException as error:
            _fail(futures, error)
            return
        finally:
            self._done()
        _settle(futures, (list(result), int(result.header.revision)))

    async def _read_namespace(self, namespace: str, services: dict[str, list[_Asking]]) -> None:
        prefix = self._layout.namespace_prefix(namespace)
        self.namespace_reads += 1
        found: dict[str, list[Any]] = {service: [] for service in services}
        try:
            revision = await _read_pages(self._pool, prefix, found)
        except BaseException as error:
            for asking in services.values():
                _fail([future for future, _ in asking], error)
            return
        finally:
            self._reading.discard(namespace)
            self._done()
        sharers = [(service, sharer) for service, asking in services.items() for future, sharer in asking
                   if sharer is not None and not future.done()]
        if sharers:
            self.namespace_streams += 1
            stream = NamespaceStream(self._pool, prefix, revision + 1, self._probe)
            for service, sharer in sharers:
                stream.attach(sharer, service)
        for service, asking in services.items():
            _settle([future for future, _ in asking], (found[service], revision))


async def _read_pages(pool: EndpointPool, prefix: bytes, found: dict[str, list[Any]]) -> int:
    """Read every key under ``prefix`` page by page, all at the first page's revision (through aetcd's generated
    stub: its client has no limit or revision parameter); the key-values of the services in ``found`` go there.
    Returns the revision. Each page has the request deadline of its own: 50 000 instances are 25 pages, read while
    the same loop starts thousands of watch streams, and one deadline for all of them ran out (and every stream
    waiting for the read retried)."""
    end = prefix_range_end(prefix)
    key, revision = prefix, 0
    # The service segment of each key, compared as bytes: decoding and splitting 50 000 keys was a tenth of the
    # sync's CPU. A key whose remainder is not UTF-8 is still handed over; the stream's decoding skips it.
    start = len(prefix)
    wanted = {service.encode(): listed for service, listed in found.items()}

    async def page(client: Any) -> Any:
        request = rpc.RangeRequest(key=key, range_end=end, limit=LIST_PAGE, revision=revision)
        return await rpc.KVStub(client.channel).Range(request, metadata=client.metadata)

    while True:
        response = await pool.call("list services", page)
        revision = revision or int(response.header.revision)
        for kv in response.kvs:
            found_key = kv.key
            slash = found_key.find(b"/", start)
            if start < slash < len(found_key) - 1:
                listed = wanted.get(found_key[start:slash])
                if listed is not None:
                    listed.append(kv)
        if not response.more or not response.kvs:
            return revision
        key = bytes(response.kvs[-1].key) + b"\0"


def _check_created(response: Any, prefix: bytes) -> None:
    """Raise unless ``response`` says the watch of ``prefix`` was created."""
    if response is None or response is EOF:
        raise _StreamLost("the watch stream closed before it was created")
    if int(response.compact_revision) != 0:
        raise _Compacted
    if not response.created or response.canceled:
        raise BackendUnavailableError(
            f"etcd refused to watch {prefix.decode(errors='replace')}: {response.cancel_reason or 'canceled'}"
        )


def _check_response(response: Any) -> None:
    """Raise unless ``response`` is events or progress of a watch that goes on."""
    if response is EOF:
        raise _StreamLost("the watch stream ended")
    if int(response.compact_revision) != 0:
        raise _Compacted
    if response.canceled:
        raise _StreamLost(f"etcd canceled the watch: {response.cancel_reason}")


def _settle(futures: list[asyncio.Future[Any]], value: Any) -> None:
    for future in futures:
        if not future.done():
            future.set_result(value)


def _fail(futures: list[asyncio.Future[Any]], error: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


class NamespaceStream(_ProbedCall):
    """One etcd watch of a namespace, shared by the service streams that one namespace read listed.

    It starts at that read's revision + 1, so no change falls between their lists and the watch, and hands each
    attached stream the events under its service, in etcd's order; a response without events (a progress
    notification) goes to all of them. Opening an etcd watch stream per service was half of the initial sync of
    5 000 watched services (4.5 s; 2.0-2.7 s without them). A stream detaches when it closes or fails; the watch
    ends with its last stream. When the watch fails, etcd cancels it or the probe gives up on its client, every
    attached stream hears of it as of the loss of its own stream: it reconnects alone, with a stream of its own
    from its last revision + 1 (re-listing if etcd moved meanwhile), or re-lists after a compaction.
    """

    def __init__(self, pool: EndpointPool, prefix: bytes, start_revision: int, probe: StreamProbe) -> None:
        self._pool = pool
        self._prefix = prefix
        self._start_revision = start_revision
        self._probe = probe
        self._members: dict[bytes, list[ServiceWatch]] = {}  # service segment → attached streams
        self._call: Any = None
        self._client: Any = None
        self._probe_failed = False
        self._task: asyncio.Task[None] | None = None

    @property
    def member_count(self) -> int:
        """How many service streams are attached."""
        return sum(len(members) for members in self._members.values())

    @property
    def running(self) -> bool:
        """Whether its etcd watch is still followed (it has attached streams and has not failed)."""
        return self._task is not None and not self._task.done()

    def attach(self, stream: ServiceWatch, service: str) -> None:
        """Hand ``stream`` the events of ``service`` from the start revision on (starts the watch if needed)."""
        self._members.setdefault(service.encode(), []).append(stream)
        stream.share(self)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="etcd-namespace-watch")

    def detach(self, stream: ServiceWatch, service: str) -> None:
        """Stop handing ``stream`` events; the watch ends with its last stream."""
        members = self._members.get(service.encode())
        if members is not None and stream in members:
            members.remove(stream)
            if not members:
                del self._members[service.encode()]
        if not self._members and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        try:
            await self._follow()
        except asyncio.CancelledError:
            if _cancelled_by_us():
                raise  # its last stream detached
            reason = (f"etcd did not answer a progress request within {self._pool.timeout:g} s" if self._probe_failed
                      else "the watch call was cancelled under us (its channel closed)")
            self._fail_all(lambda: _StreamLost(reason))
        except (_StreamLost, _Compacted, BackendUnavailableError) as ended:
            kind, args = type(ended), ended.args
            self._fail_all(lambda: kind(*args))
        except Exception as failure:
            message = str(failure)
            if is_connection_error(failure):
                if self._client is not None:
                    await self._pool.report_failure(self._client)
                self._fail_all(lambda: _StreamLost(message))
            else:  # a bug or a refusal: every stream says so, and tries again alone
                log.error("etcd watch of %s failed", self._prefix, exc_info=failure)
                message = f"watching {self._prefix.decode(errors='replace')} on etcd failed: {message}"
                self._fail_all(lambda: BackendUnavailableError(message))
        finally:
            self._probe.remove(self)
            call, self._call = self._call, None
            if call is not None:
                call.cancel()

    async def _follow(self) -> None:
        client = await self._pool.client()
        self._client = client
        call = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
        self._call = call
        create = rpc.WatchCreateRequest(
            key=self._prefix,
            range_end=prefix_range_end(self._prefix),
            start_revision=self._start_revision,
            progress_notify=True,
        )
        async with asyncio.timeout(self._pool.timeout):
            await call.write(rpc.WatchRequest(create_request=create))
            created = await call.read()
        if _refused_for_stale_token(created, client):
            await self._pool.renew(client)
        _check_created(created, self._prefix)
        self._probe.add(self)
        start = len(self._prefix)
        while True:
            response = await call.read()
            self._probe.answered(id(client))
            _check_response(response)
            if not response.events:
                revision = int(response.header.revision)
                for members in list(self._members.values()):
                    for stream in members:
                        stream.fed_progress(revision)
                continue
            # The service segment of each key, compared as bytes (as in _read_pages).
            by_service: dict[bytes, list[Any]] = {}
            for event in response.events:
                key = event.kv.key
                slash = key.find(b"/", start)
                if slash > start:
                    by_service.setdefault(key[start:slash], []).append(event)
            for service, events in by_service.items():
                for stream in self._members.get(service, ()):
                    stream.fed_events(events)

    def _fail_all(self, error: Callable[[], BaseException]) -> None:
        """Tell every attached stream that the watch is gone (each raises an error of its own)."""
        members = [stream for streams in self._members.values() for stream in streams]
        self._members.clear()
        self._task = None
        for stream in members:
            stream.fed_error(error())


class ServiceWatch(_ProbedCall, AsyncIterator[Snapshot]):
    """The snapshot stream of one ``watch(namespace, service)`` call: the current set, then one per change.

    Iterate it; ``aclose()`` (or cancelling the task iterating it) ends the etcd watch stream. Once the backend
    is closed the stream raises :class:`ClosedError`.
    """

    def __init__(
        self,
        pool: EndpointPool,
        layout: KeyLayout,
        namespace: str,
        service: str,
        is_closed: Callable[[], bool],
        probe: StreamProbe | None = None,
        lister: Lister | None = None,
    ) -> None:
        self.namespace = namespace
        self.service = service
        self._pool = pool
        self._layout = layout
        self._probe = probe if probe is not None else StreamProbe(pool.timeout)
        self._lister = lister if lister is not None else Lister(pool, layout, self._probe)
        self._prefix = layout.service_prefix(namespace, service)
        self._is_closed = is_closed
        self._members: dict[bytes, Instance] = {}
        self._revision = 0
        self._listed = False
        self._stale = False
        self._yielded: Snapshot | None = None
        self._call: Any = None
        self._client: Any = None
        # The namespace watch this stream is attached to instead of a call of its own, and what it handed over:
        # lists of events, a progress revision, or the error that ended it.
        self._shared: NamespaceStream | None = None
        self._feed: deque[list[Any] | int | BaseException] = deque()
        self._fed = asyncio.Event()
        #: Whether the probe gave up on the stream's client.
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
    def probe(self) -> StreamProbe:
        """The liveness probe this stream shares with the backend's other streams."""
        return self._probe

    @property
    def lister(self) -> Lister:
        """The reads this stream's lists go through, shared with the backend's other streams."""
        return self._lister

    @property
    def revision(self) -> int:
        """The etcd revision this stream has applied (progress notifications included)."""
        return self._revision

    @property
    def shared(self) -> NamespaceStream | None:
        """The namespace watch this stream is attached to, if it has no etcd watch stream of its own."""
        return self._shared

    def share(self, stream: NamespaceStream) -> None:
        """Follow ``stream`` from now on (called by :meth:`NamespaceStream.attach`, before this stream's list
        returns: what the watch hands over from then on waits here until the stream reads it)."""
        self._shared = stream
        self._feed.clear()

    def fed_events(self, events: list[Any]) -> None:
        """Events of this service from the namespace watch."""
        self._feed.append(events)
        self._fed.set()

    def fed_progress(self, revision: int) -> None:
        """A progress notification from the namespace watch. With nothing waiting to be read it is applied here,
        without waking the stream (one notification reaches thousands of streams; none of them changes); behind
        waiting events it waits too, else those events would be skipped as already applied."""
        if not self._feed:
            self._revision = max(self._revision, revision)
        elif isinstance(self._feed[-1], int):
            self._feed[-1] = revision
        else:
            self._feed.append(revision)

    def fed_error(self, error: BaseException) -> None:
        """The namespace watch ended; this stream raises ``error`` once it has read what came before."""
        self._feed.append(error)
        self._fed.set()

    async def __anext__(self) -> Snapshot:
        return await anext(self._snapshots)

    async def aclose(self) -> None:
        """End the stream (cancels its etcd watch call)."""
        await self._snapshots.aclose()

    async def _stream(self) -> AsyncGenerator[Snapshot, None]:
        try:
            # The first snapshot as soon as the list answers (BackendUnavailableError if etcd does not answer
            # within the timeout); its watch stream starts at the list's revision + 1.
            await self._list(share=True)
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
                    self._probe_failed = False
                    if self._shared is None:  # a namespace watch is probed as a whole
                        self._probe.add(self)
                    try:
                        while True:
                            if await self._next_change():
                                yield self._sent(self._snapshot())
                    finally:
                        self._probe.remove(self)
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
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.detach(self, self.service)
            self._feed.clear()
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    async def _list(self, share: bool = False) -> None:
        kvs, revision = await self._lister.read(self.namespace, self.service, self if share else None)
        members: dict[bytes, Instance] = {}
        for kv in kvs:
            instance = self._decode(kv.key, kv.value)
            if instance is not None:
                members[kv.key] = instance
        self._members = members
        self._revision = revision
        self._listed = True
        self.list_count += 1

    def _decode(self, key: bytes, value: bytes) -> Instance | None:
        # Every key read or watched is under the service's prefix: what follows it is the key segment.
        if not key.startswith(self._prefix) or len(key) == len(self._prefix):
            return None
        try:
            segment = key[len(self._prefix):].decode()
        except UnicodeDecodeError:
            return None
        return decode_endpoint_cached(value, self.namespace, self.service, segment)

    async def _open(self, reconnecting: bool) -> None:
        """Open a watch stream from the next revision (listing first if needed); the set is fresh once it is open.

        After a loss the stream resumes from the last applied revision + 1, and re-lists if etcd moved meanwhile.
        A stream that a namespace read listed is already followed by that read's namespace watch.
        """
        if self._shared is not None and not reconnecting:
            return
        self._cancel_call()  # a stream a failed attempt left open
        if reconnecting and self.before_reconnect is not None:
            await self.before_reconnect()
        resuming = reconnecting and self._listed
        if not self._listed:
            await self._list(share=True)
            if self._shared is not None:
                self._stale = False
                return
        client = await self._pool.client()
        try:
            call = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
            self._call = call
            self._client = client
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
        _check_created(created, self._prefix)
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


    async def _next_change(self) -> bool:
        """Read and apply one watch response; whether the set changed."""
        if self._shared is not None:
            return await self._next_shared_change()
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
                await self._pool.report_failure(self._client)
                raise _StreamLost(str(error)) from error
            raise
        self._probe.answered(id(self._client))
        _check_response(response)
        return self._apply(response)

    async def _next_shared_change(self) -> bool:
        """Apply what the namespace watch handed over next (waiting for it); whether the set changed."""
        while not self._feed:
            self._fed.clear()
            await self._fed.wait()
        item = self._feed.popleft()
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, int):
            self._revision = max(self._revision, item)
            return False
        return self._apply_events(item)

    def _apply(self, response: Any) -> bool:
        if not response.events:
            # A progress notification: etcd sends them only to watchers that are caught up.
            self._revision = max(self._revision, int(response.header.revision))
            return False
        return self._apply_events(response.events)

    def _apply_events(self, events: Any) -> bool:
        changed = False
        for event in events:
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
        self._revision = max(self._revision, *(int(event.kv.mod_revision) for event in events))
        return changed
