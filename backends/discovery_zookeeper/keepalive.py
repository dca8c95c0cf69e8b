"""Ephemeral registrations, their ownership and their self-healing.

Ownership (docs/decisions/session-ownership.md): the last registrant owns an instance id. ``register`` takes the
znode over whoever holds it; a node held by another session is replaced in one ZooKeeper transaction (delete that
exact version + create), so its previous owner never sees the id missing, only owned by someone else. Every other
write (update, heal) checks ``ephemeralOwner`` first: our live session → rewrite in place; the session we had
before an expiry (the node the server has not reaped yet — Curator #131/#200, kazoo #491, dubbo #5135) → replace
it; anyone else → the id was taken over: report ``LOST`` (``TAKEN_OVER``) and never touch it again.

Each registered znode carries an ``exists`` watch: deleted while our session lives (an operator) → written back,
``LOST`` (``REMOVED``) → ``RESTORED``; owned by another session → taken over.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from discovery.core.backend import LostReason, RegistrationState, StateListener
from discovery.core.errors import BackendUnavailableError, DiscoveryError, NotRegisteredError
from discovery.core.models import Instance
from discovery.core.tasks import KeyLocks
from discovery_zookeeper.bridge import CONNECTION_ERRORS, LoopWatcher, settled_future
from discovery_zookeeper.connection import SessionEvent, ZooKeeperSession
from discovery_zookeeper.layout import Layout
from discovery_zookeeper.records import encode_record
from discovery_zookeeper.watch import OwnCreates

logger = logging.getLogger("discovery.backends.zookeeper.keepalive")

Key = tuple[str, str, str]


class _Contended(Exception):
    """The znode changed between our read and our write; try the whole write again."""


class _TakenOver(Exception):
    """Another registrant's session owns the znode: it took the instance id over."""


#: A transaction's creates are capped in number and bytes, well below ZooKeeper's 1 MiB request limit
#: (jute.maxbuffer), past which the server drops the connection.
BATCH_MAX_CREATES = 128
BATCH_MAX_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Created:
    """What :meth:`EphemeralCreates.create` did: the id of the session that created the node (``None``: not created,
    for a reason the one-by-one write handles) and, when it was created, the answer to the ``exists`` (with the
    owner watch) sent right behind the create."""

    session_id: int | None
    owner_check: asyncio.Future[Any] | None = None
    #: Made under a persistent watch on its service armed (on this connection) before it was sent: every change
    #: after the create is an event, so no owner check was sent.
    covered: bool = False


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # an owner check nobody reads (its create failed) must not log "never retrieved"


def _all_made(results: Any) -> bool:
    """Whether a ``multi`` transaction's results say every operation in it succeeded."""
    return isinstance(results, list) and not any(isinstance(result, Exception) for result in results)


def _vouch(
    own_creates: OwnCreates, path: str, session_id: int | None, transaction: Any, check: asyncio.Future[Any]
) -> None:
    """Tell ``own_creates`` what the owner check behind the create of ``path`` in ``transaction`` found."""
    if session_id is not None and transaction.ready() and transaction.successful() and _all_made(transaction.value):
        own_creates.checked(path, session_id, check)
    else:
        own_creates.failed(path)


class EphemeralCreates:
    """Creates of ephemeral znodes, many per round trip (group commit).

    A create asked for while no transaction is in flight is sent at once; creates asked for while one is in flight
    wait and go together in the next, as one ``multi`` transaction. One registrant therefore waits for nothing,
    and N concurrent ones share round trips (and kazoo's per-request cost) instead of queueing N requests. A
    transaction is atomic: if any create in it fails (the node exists, its parent is missing), none is made, and
    each caller is told to write its node one by one (:meth:`create` returns no session).

    With an ``owner_watch``, the ``exists`` that arms it on each node is sent right behind the transaction, before
    its answer: the server runs a session's requests in order, so it sees the node just created, and its answer
    arrives while the caller goes on (sent after the answer, it queued in front of the caller's next create).
    ``own_creates`` (with an owner watch only) is told what each create wrote and what its owner check found, so
    that a watch of the service need not read the node back.
    """

    def __init__(
        self,
        session: ZooKeeperSession,
        owner_watch: LoopWatcher | None = None,
        own_creates: OwnCreates | None = None,
        covered: Callable[[str], int | None] | None = None,
    ) -> None:
        self._session = session
        self._owner_watch = owner_watch
        self._own_creates = own_creates if owner_watch is not None else None
        self._covered = covered
        self._queued: list[tuple[str, bytes, asyncio.Future[Created]]] = []
        self._flush_planned = False
        self._in_flight = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def create(self, path: str, data: bytes) -> Created:
        """Create the node (see :class:`Created`); ``BackendUnavailableError`` as any request."""
        loop = asyncio.get_running_loop()
        created: asyncio.Future[Created] = loop.create_future()
        if not self._in_flight and not self._queued:
            # Nothing to share the round trip with: send it from here, now (no task, no extra loop iteration).
            self._in_flight = True
            await self._commit([(path, data, created)])
            return created.result()
        self._queued.append((path, data, created))
        if not self._in_flight and not self._flush_planned:
            self._flush_planned = True
            loop.call_soon(self._flush)
        return await created

    def _flush(self) -> None:
        self._flush_planned = False
        if self._in_flight:
            return  # the transaction in flight sends what is queued when it completes
        batch: list[tuple[str, bytes, asyncio.Future[Created]]] = []
        size = 0
        while self._queued and len(batch) < BATCH_MAX_CREATES:
            path, data, created = self._queued[0]
            if batch and size + len(data) > BATCH_MAX_BYTES:
                break
            self._queued.pop(0)
            if created.cancelled():
                continue  # its caller gave up before it was sent
            batch.append((path, data, created))
            size += len(data)
        if batch:
            self._in_flight = True
            task = asyncio.get_running_loop().create_task(self._commit(batch), name="zookeeper-creates")
            self._tasks.add(task)  # held until done: a task nobody holds may be collected
            task.add_done_callback(self._tasks.discard)
        elif self._queued:
            self._flush()

    async def _commit(self, batch: list[tuple[str, bytes, asyncio.Future[Created]]]) -> None:
        session_id = self._session.session_id
        client = self._session.client
        own_creates = self._own_creates
        checks: list[asyncio.Future[Any] | None] = [None] * len(batch)
        # The connection each create's persistent watch is armed on (None: not covered, send an owner check).
        covered = self._covered
        epochs = [None if covered is None else covered(path) for path, _, _ in batch]
        try:
            transaction = client.transaction()
            for path, data, _ in batch:
                transaction.create(path, data, ephemeral=True)
                if own_creates is not None:
                    own_creates.sending(path, data)  # before the send: an owner watch event after it drops it
            sent = self._session.send("multi", transaction.commit_async)
            if self._owner_watch is not None:
                self._send_owner_checks(batch, checks, sent, session_id, epochs)
            results: Any = await self._session.reply("multi", sent)
        except (NodeExistsError, NoNodeError):
            results = None  # a failed transaction reported as the whole request's error
        except Exception as error:  # the connection, a timeout, a refusal: every caller sees it
            self._tell_own_creates(batch, checks, None, epochs)
            for _, _, created in batch:
                if not created.done():
                    created.set_exception(error)
            return
        finally:
            self._in_flight = False
            if self._queued:
                self._flush()
        succeeded = _all_made(results)
        if any(epoch is not None for epoch in epochs):
            # A watch armed on a connection that has changed since did not see every change after the create.
            now = self._session.connection_epoch
            epochs = [epoch if epoch == now else None for epoch in epochs]
        self._tell_own_creates(batch, checks, session_id if succeeded else None, epochs)
        for (_, _, created), owner_check, epoch in zip(batch, checks, epochs, strict=True):
            if not created.done():
                created.set_result(
                    Created(session_id, owner_check, covered=epoch is not None) if succeeded else Created(None)
                )

    def _tell_own_creates(
        self,
        batch: list[tuple[str, bytes, asyncio.Future[Created]]],
        checks: list[asyncio.Future[Any] | None],
        session_id: int | None,
        epochs: list[int | None],
    ) -> None:
        """The batch's creates that failed (all of them if ``session_id`` is ``None``), that a persistent watch covers
        (usable now), or that have no owner check to vouch for them; an owner check that answers vouches for its
        create itself (:meth:`_send_owner_checks`)."""
        own_creates = self._own_creates
        if own_creates is None:
            return
        for (path, _, _), check, epoch in zip(batch, checks, epochs, strict=True):
            if session_id is not None and epoch is not None:
                own_creates.made(path)
            elif session_id is None or check is None:
                own_creates.failed(path)

    def _send_owner_checks(
        self,
        batch: list[tuple[str, bytes, asyncio.Future[Created]]],
        checks: list[asyncio.Future[Any] | None],
        transaction: Any,
        session_id: int | None,
        epochs: list[int | None],
    ) -> None:
        """Send the owner checks of a batch just sent, but for creates a persistent watch covers (``epochs``); one
        that cannot be sent (the client is closing) stays ``None``, and its registration checks the owner the
        ordinary way once the create has answered.

        Each check tells ``own_creates`` what it found as soon as its answer reaches the loop, not once the
        transaction's caller has run on: kazoo's connection thread may read the transaction's answer, the check's
        and a watch's listing of the new node in one burst, and the watch, going on with that listing first,
        would read back a node it could take from here. The transaction's answer was read before the check's
        (one session's replies come in order), so it is known when the check answers.
        """
        loop = asyncio.get_running_loop()
        client = self._session.client
        own_creates = self._own_creates
        for number, (path, _, _) in enumerate(batch):
            if epochs[number] is not None:
                continue
            try:
                request = self._session.send("exists", client.exists_async, path, self._owner_watch)
            except BackendUnavailableError:
                return  # the transaction's own answer tells its callers what happened
            check = settled_future(loop, request)
            check.add_done_callback(_retrieved)
            if own_creates is not None:
                check.add_done_callback(functools.partial(_vouch, own_creates, path, session_id, transaction))
            checks[number] = check


@dataclass(slots=True)
class _Registration:
    instance: Instance
    on_state: StateListener
    registered_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    #: The session that owns the znode we last wrote (it may be a session that has since expired).
    owner_session: int | None = None
    #: Set while the znode is known to be in place (not lost): an update of a lost registration waits on it.
    in_place: asyncio.Event = field(default_factory=asyncio.Event)
    #: The answer to the ``exists`` sent with the create that just wrote the node, until :meth:`Registrations._arm`
    #: takes it (see :class:`EphemeralCreates`).
    owner_check: asyncio.Future[Any] | None = None
    #: The create that just wrote the node was covered by a persistent watch (no owner check), until ``_arm``.
    covered: bool = False

    def __post_init__(self) -> None:
        self.in_place.set()

    @property
    def lost(self) -> bool:
        """Whether the znode is lost (session expired, removed) and not yet written back."""
        return not self.in_place.is_set()

    @lost.setter
    def lost(self, value: bool) -> None:
        if value:
            self.in_place.clear()
        else:
            self.in_place.set()


class Registrations:
    """What this backend registered, kept alive by the session and rewritten after an expiry."""

    def __init__(
        self,
        session: ZooKeeperSession,
        layout: Layout,
        payload_class: str | None,
        request_timeout: float,
        own_creates: OwnCreates | None = None,
    ) -> None:
        self._session = session
        self._own_creates = own_creates
        self._request_timeout = request_timeout
        self._layout = layout
        self._payload_class = payload_class
        self._entries: dict[Key, _Registration] = {}
        self._healer: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()
        # One lock per key: a healing write and a deregistration of one key never overlap (a write-back finishing
        # after the delete would bring a deregistered instance back).
        self._key_locks = KeyLocks()
        self._session_loop = asyncio.get_running_loop()
        # One object, handed to kazoo on every exists(): kazoo keeps a set of watchers per path.
        self._node_watch = LoopWatcher(self._session_loop, self._node_event)
        # The persistent watch on each service registered in (ZooKeeper 3.6+), by the connection it is armed on:
        # creates under it need no owner check (every change after them is an event).
        self._watch_below = LoopWatcher(self._session_loop, self._event_below)
        self._covered: dict[str, int] = {}
        self._watched: set[str] = set()
        # Paths being registered: True once an owner event came for one before its registration was recorded.
        self._creating: dict[str, bool] = {}
        self._creates = EphemeralCreates(session, self._node_watch, own_creates, self._covering)
        self._closed = False
        session.add_listener(self._on_session_event)

    def keys(self) -> list[Key]:
        """The keys currently registered."""
        return list(self._entries)

    async def register(self, instance: Instance, on_state: StateListener) -> None:
        """Write the instance's ephemeral znode, taking it over from whoever holds it, and remember it."""
        entry = _Registration(instance, on_state)
        path = self._layout.instance_path(instance)
        await self._cover(path.rpartition("/")[0])
        self._creating[path] = False
        try:
            async with self._key_locks.hold(instance.key):
                await self._write(entry, take_over=True, create_first=True)
                self._entries[instance.key] = entry
        finally:
            changed_meanwhile = self._creating.pop(path, False)
        await self._arm(entry, changed_meanwhile)

    async def _cover(self, directory: str) -> None:
        """Arm a persistent watch on a service's znode, once per connection, before its first create (a server
        before 3.6 has none: its registrations send an owner check each)."""
        session = self._session
        if session.persistent_watches is False or self._covered.get(directory) == session.connection_epoch:
            return
        self._watched.add(directory)
        try:
            epoch = await session.cover(directory, self._watch_below)
        except DiscoveryError as error:  # the create that follows tells its caller what is wrong
            logger.debug("arming the persistent watch of %s: %s", directory, error)
            epoch = None
        if epoch is None:
            self._covered.pop(directory, None)
        else:
            self._covered[directory] = epoch

    def _covering(self, path: str) -> int | None:
        """The connection a persistent watch covering ``path`` is armed on, if any."""
        return self._covered.get(path.rpartition("/")[0])

    def _release_watches(self) -> None:
        for directory in self._watched:
            self._session.remove_persistent_watch(directory, self._watch_below)
        self._watched.clear()
        self._covered.clear()

    async def update(self, instance: Instance) -> None:
        """Rewrite the data of a registered instance; after an expiry the healer writes the new value.

        Raises :class:`NotRegisteredError` (nothing written) when the id is not ours, or no longer: taken over.
        """
        key = instance.key
        entry = self._entries.get(key)
        if entry is None:
            raise NotRegisteredError(f"{'/'.join(key)} is not registered by this backend")
        entry.instance = instance
        if entry.lost:
            # The new value is what the healer writes back; the call returns once the server holds it (so every
            # read after it shows it), or says it could not tell within the request timeout.
            try:
                async with asyncio.timeout(self._request_timeout):
                    await entry.in_place.wait()
            except TimeoutError:
                raise BackendUnavailableError(
                    f"{'/'.join(key)} is lost (its session expired) and not yet written back; the new value is"
                    " written with it"
                ) from None
            if self._entries.get(key) is not entry:
                raise NotRegisteredError(f"{'/'.join(key)} is no longer registered by this backend")
        try:
            async with self._key_locks.hold(key):
                created = await self._write(entry, take_over=False)
        except _TakenOver:
            self._taken_over(key, entry)
            raise NotRegisteredError(f"{'/'.join(key)} was taken over by another registrant") from None
        if created:  # someone deleted it behind our back; the write put it back
            _notify(entry, RegistrationState.LOST, LostReason.REMOVED)
            _notify(entry, RegistrationState.RESTORED)
        await self._arm(entry)

    def adopt(self, instance: Instance) -> None:
        """Someone else rewrote a registered znode: the healer writes ``instance`` back after an expiry, not ours."""
        entry = self._entries.get(instance.key)
        if entry is not None:
            entry.instance = instance

    async def deregister(self, instance: Instance) -> None:
        """Forget the instance and delete its znode if our session owns it; a missing node is fine."""
        self._entries.pop(instance.key, None)
        path = self._layout.instance_path(instance)
        async with self._key_locks.hold(instance.key):  # after a write-back in flight, never before it
            try:
                stat = await self._session.request("exists", self._session.client.exists_async, path)
                if stat is None or stat.ephemeralOwner != self._session.session_id:
                    return
                await self._session.request("delete", self._session.client.delete_async, path, stat.version)
            except (NoNodeError, BadVersionError):
                return

    async def deregister_all(self) -> None:
        """Delete every registration (best effort: the CloseSession that follows removes the rest)."""
        self._closed = True
        self._cancel_healer()
        self._release_watches()
        entries = list(self._entries.values())
        results = await asyncio.gather(*(self.deregister(e.instance) for e in entries), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                logger.debug("deregistering on close: %s", result)

    def abandon(self) -> None:
        """Stop healing and forget everything without touching the server (``abort``)."""
        self._closed = True
        self._cancel_healer()
        self._release_watches()
        self._entries.clear()

    # -- writing -------------------------------------------------------------------------------------------------

    async def _write(self, entry: _Registration, *, take_over: bool, create_first: bool = False) -> bool:
        """Write the entry's znode; ``take_over`` replaces a node of any other session (``register``), otherwise
        only one of our own earlier session (:class:`_TakenOver` for anyone else's). True if the node was created
        because none was there. ``create_first``: the node most likely does not exist (a registration, a restore):
        try a create shared with other writes first (:class:`EphemeralCreates`).
        """
        if create_first:
            path = self._layout.instance_path(entry.instance)
            created = await self._creates.create(path, self._record(entry))
            if created.session_id is not None:
                entry.owner_session = created.session_id
                entry.owner_check = created.owner_check
                entry.covered = created.covered
                return True
        try:
            return await self._write_once(entry, take_over)  # the common case, without building a retry loop
        except _Contended:
            pass
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_Contended),
            stop=stop_after_attempt(7),  # eight attempts in all
            wait=wait_random_exponential(multiplier=0.01, max=0.2),
            reraise=True,
        ):
            with attempt:
                return await self._write_once(entry, take_over)
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    async def _write_once(self, entry: _Registration, take_over: bool) -> bool:
        client = self._session.client
        path = self._layout.instance_path(entry.instance)
        data = self._record(entry)
        session_id = self._session.session_id
        try:
            await self._session.request("create", client.create_async, path, data, ephemeral=True, makepath=True)
            entry.owner_session = session_id
            return True
        except NodeExistsError:
            pass
        try:
            _, stat = await self._session.request("get", client.get_async, path)
            if stat.ephemeralOwner == session_id:
                await self._session.request("set", client.set_async, path, data, stat.version)
                entry.owner_session = session_id
                return False
            if not take_over and stat.ephemeralOwner != entry.owner_session:
                raise _TakenOver(path)
            logger.info("replacing %s held by session 0x%x", path, stat.ephemeralOwner)
            # One transaction: whoever held it sees it owned by us, never missing (it would write it back).
            transaction = client.transaction()
            transaction.delete(path, stat.version)
            transaction.create(path, data, ephemeral=True)
            results = await self._session.request("replace", transaction.commit_async)
            if not any(isinstance(result, Exception) for result in results):
                entry.owner_session = session_id
                return False
        except (NoNodeError, BadVersionError):
            pass
        raise _Contended(path)

    def _record(self, entry: _Registration) -> bytes:
        return encode_record(entry.instance, payload_class=self._payload_class, registered_at_ms=entry.registered_at_ms)

    # -- watching our own znodes ---------------------------------------------------------------------------------

    async def _arm(self, entry: _Registration, changed_meanwhile: bool = False) -> None:
        """Set an ``exists`` watch on the entry's znode (kazoo keeps one per path and callback, so re-arming is
        free) and check the owner once: a change between our write and the watch would otherwise go unseen. The
        caller does not wait for the answer. A create that sent its ``exists`` along already did both; one that a
        persistent watch covers needs neither. ``changed_meanwhile``: an owner event came for the node before the
        registration was recorded (and was not acted on): check it now.
        """
        check, entry.owner_check = entry.owner_check, None
        covered, entry.covered = entry.covered, False
        if covered and not changed_meanwhile:
            return
        if check is None or changed_meanwhile:
            self._node_changed(self._layout.instance_path(entry.instance))
            return
        key = entry.instance.key
        if self._entries.get(key) is entry and not self._closed:
            check.add_done_callback(functools.partial(self._owner_read, key, entry))

    def _event_below(self, event: WatchedEvent) -> None:
        """The persistent watch of a service registered in reported a node: a change or deletion is an owner event
        (a creation is our own create, or follows a deletion already reported)."""
        if event.type != EventType.CREATED:
            self._node_event(event)

    def _node_event(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or event.path is None:
            return  # connection state; the session listener handles it
        if event.path in self._creating:
            self._creating[event.path] = True  # its registration is not recorded yet: _arm checks it
        if self._own_creates is not None:
            self._own_creates.node_event(event.path)  # a watch that took the node's data from its create reads it
        self._node_changed(event.path)

    def _checkable(self, key: Key | None) -> _Registration | None:
        """The registration of ``key`` if its owner can be checked now (an expiry is the healer's business; a
        disconnection is re-checked by kazoo's SetWatches)."""
        entry = None if key is None else self._entries.get(key)
        if entry is None or entry.lost or self._closed or not self._session.connected.is_set():
            return None
        return entry

    def _missing(self, key: Key, entry: _Registration, stat: Any) -> bool:
        """Judge an owner check's answer: True when the znode is gone and must be written back; given up if another
        session took it over; nothing when the registration changed meanwhile."""
        if self._closed or self._entries.get(key) is not entry or entry.lost:
            return False
        if stat is None:
            return True
        if stat.ephemeralOwner not in (self._session.session_id, entry.owner_session):
            self._taken_over(key, entry)
        return False

    def _node_changed(self, path: str) -> None:
        """Send the ``exists`` of :meth:`_verify` from here, without a task: this runs once per registration, and
        its answer rarely needs more than a look (a task is made only to write a removed node back)."""
        key = self._layout.key_of(path)
        entry = self._checkable(key)
        if key is None or entry is None:
            return
        try:
            request = self._session.client.exists_async(self._layout.instance_path(entry.instance), self._node_watch)
        except CONNECTION_ERRORS as error:  # disconnected meanwhile: kazoo's SetWatches re-checks on reconnect
            logger.debug("checking the owner of %s: %s", key, error)
            return
        settled_future(self._session_loop, request).add_done_callback(functools.partial(self._owner_read, key, entry))

    def _owner_read(self, key: Key, entry: _Registration, answer: asyncio.Future[Any]) -> None:
        if answer.cancelled():
            return
        error = answer.exception()
        if error is not None:
            logger.debug("checking the owner of %s: %r", key, error)
        elif self._missing(key, entry, answer.result()):
            # Lost from here on, not once the task runs: a second check answering meanwhile (an owner event heard
            # both by a one-shot and a persistent watch) then starts no second write-back.
            self._removed(key, entry)
            task = asyncio.get_running_loop().create_task(
                self._write_back_removed(key, entry), name="zookeeper-write-back"
            )
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def _verify(self, key: Key) -> None:
        """Check who owns the znode of a registration (and re-arm its watch): written back if missing, given up
        if another session took it over.
        """
        entry = self._checkable(key)
        if entry is None:
            return
        path = self._layout.instance_path(entry.instance)
        try:
            stat = await self._session.request("exists", self._session.client.exists_async, path, self._node_watch)
        except DiscoveryError as error:
            logger.debug("checking the owner of %s: %s", path, error)
            return
        if self._missing(key, entry, stat):
            self._removed(key, entry)
            await self._write_back_removed(key, entry)

    def _removed(self, key: Key, entry: _Registration) -> None:
        logger.warning("%s was deleted by someone else while our session lives; writing it back", key)
        entry.lost = True
        _notify(entry, RegistrationState.LOST, LostReason.REMOVED)

    async def _write_back_removed(self, key: Key, entry: _Registration) -> None:
        """Write a registration :meth:`_removed` found deleted back."""
        try:
            async with self._key_locks.hold(key):
                if self._entries.get(key) is not entry:
                    return  # deregistered meanwhile
                await self._write(entry, take_over=False)
        except _TakenOver:
            self._taken_over(key, entry)
            return
        except DiscoveryError as error:
            logger.warning("writing back %s failed (%s); the healer retries", key, error)
            self._start_healer()
            return
        if self._entries.get(key) is entry and entry.lost:
            entry.lost = False
            _notify(entry, RegistrationState.RESTORED)
            await self._verify(key)

    def _taken_over(self, key: Key, entry: _Registration) -> None:
        """Another registrant owns the id now: forget it (no heal, no delete) and say so."""
        if self._entries.get(key) is entry:
            del self._entries[key]
        logger.warning("%s was taken over by another registrant", key)
        entry.lost = True
        _notify(entry, RegistrationState.LOST, LostReason.TAKEN_OVER)

    # -- healing -------------------------------------------------------------------------------------------------

    def _on_session_event(self, event: SessionEvent) -> None:
        if self._closed:
            return
        if event in (SessionEvent.EXPIRED, SessionEvent.NEW_SESSION):
            self._mark_lost()
        if event is SessionEvent.NEW_SESSION:
            self._start_healer()
        elif event is SessionEvent.RECONNECTED:
            # Same session: kazoo re-sets our watches, but check each node once in case it changed meanwhile.
            for key in list(self._entries):
                self._node_changed(self._layout.instance_path(self._entries[key].instance))

    def _start_healer(self) -> None:
        if self._healer is None and not self._closed:
            self._healer = asyncio.get_running_loop().create_task(self._heal(), name="zookeeper-heal")

    def _mark_lost(self) -> None:
        for entry in self._entries.values():
            if not entry.lost:
                entry.lost = True
                _notify(entry, RegistrationState.LOST, LostReason.EXPIRED)

    async def _heal(self) -> None:
        """Rewrite every lost registration under the new session, retrying with jittered backoff."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(BackendUnavailableError),
                wait=wait_random_exponential(multiplier=0.05, max=2.0),
                reraise=True,
            ):
                with attempt:
                    await self._session.connected.wait()
                    await self._restore_lost()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("restoring ZooKeeper registrations failed")
        finally:
            self._healer = None
        still_lost = any(entry.lost for entry in self._entries.values())
        if still_lost and not self._closed and self._session.connected.is_set():
            self._healer = asyncio.get_running_loop().create_task(self._heal(), name="zookeeper-heal")

    async def _restore_lost(self) -> None:
        for key, entry in list(self._entries.items()):
            if not entry.lost or self._entries.get(key) is not entry:
                continue
            try:
                async with self._key_locks.hold(key):
                    if self._entries.get(key) is not entry:
                        continue  # deregistered (or registered anew) while we waited for the key
                    await self._write(entry, take_over=False, create_first=True)
                    entry.owner_check = None  # _verify below checks the owner (and re-arms) after the restore
            except _TakenOver:
                self._taken_over(key, entry)
                continue
            if self._entries.get(key) is entry and entry.lost:
                entry.lost = False
                _notify(entry, RegistrationState.RESTORED)
                await self._verify(key)

    def _cancel_healer(self) -> None:
        if self._healer is not None:
            self._healer.cancel()
            self._healer = None
        for check in list(self._checks):
            check.cancel()


def _notify(entry: _Registration, state: RegistrationState, reason: LostReason | None = None) -> None:
    try:
        entry.on_state(state, reason)
    except Exception:
        logger.exception("registration state listener failed for %s", entry.instance.key)
