"""The embedded in-memory backend: the default and the reference implementation.

Stores are process-wide and named by the URL path (``memory://`` is the default store,
``memory:///other`` another one), so several registries in one process share a store as clients of one
server would. Liveness works as on the real backends: every registration has a TTL deadline that its
owner's keep-alive task pushes forward; a reaper thread removes entries whose owner stopped (``abort``)
once the deadline passes, and watchers see them leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

from discovery.core.backend import Backend, Capabilities, LostReason, RegistrationState, StateListener
from discovery.core.definitions import DefinitionSnapshot, DefinitionStore, StoredDefinition
from discovery.core.errors import ClosedError, NotRegisteredError
from discovery.core.models import Instance, Snapshot, Status
from discovery.core.tasks import cancel_and_wait
from discovery.core.urls import BackendURL

Key = tuple[str, str, str]
ServiceKey = tuple[str, str]

_DEFAULT_TTL = 10.0
_MIN_TTL = 0.2


@dataclass(slots=True)
class _Entry:
    instance: Instance
    owner: int
    ttl: float
    deadline: float


#: The reaper never wakes more often than this, so refreshed deadlines cannot make it spin.
_REAPER_GRANULARITY = 0.01
#: Leftover deadlines (of removed or replaced entries) tolerated beyond the live ones before the heap is rebuilt.
_COMPACT_SLACK = 1024


class MemoryStore:
    """A thread-safe registry store shared by every memory backend that names it.

    Entries are indexed by service, so reads cost O(instances of that service), and expiry uses a heap of
    deadlines checked lazily, so the reaper's work does not grow with every refresh. A removed or replaced entry
    stays in the heap until its deadline, so the heap is rebuilt from the live entries whenever most of it is
    such leftovers: otherwise every registration made and removed within a TTL stayed in memory for that TTL
    (~4 objects each: 25 000 registrations/s with a 30 s TTL held ~750 000 of them), for the garbage collector to
    walk again and again.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Condition()
        self._services: dict[ServiceKey, dict[str, _Entry]] = {}
        self._deadlines: list[tuple[float, int, _Entry]] = []
        self._entry_count = 0  # entries in _services: each has exactly one item in _deadlines
        self._sequence = itertools.count()
        self._revision = 0
        self._watchers: dict[ServiceKey, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._reaper = threading.Thread(target=self._reap_forever, name=f"discovery-memory-reaper-{name}", daemon=True)
        self._reaper.start()

    @property
    def revision(self) -> int:
        """The store's revision: it grows with every change."""
        return self._revision

    def _entry(self, key: Key) -> _Entry | None:
        entries = self._services.get((key[0], key[1]))
        return None if entries is None else entries.get(key[2])

    def put(self, instance: Instance, owner: int, ttl: float) -> None:
        """Insert or replace an instance, owned by ``owner`` from now on, alive for ``ttl`` seconds."""
        with self._lock:
            self._put_locked(instance, owner, ttl)

    def put_owned(self, instance: Instance, owner: int, ttl: float) -> str:
        """Replace an instance only if ``owner`` owns it: ``"ok"``, ``"missing"`` or ``"taken"`` (nothing written)."""
        with self._lock:
            entry = self._entry(instance.key)
            if entry is None:
                return "missing"
            if entry.owner != owner:
                return "taken"
            self._put_locked(instance, owner, ttl)
            return "ok"

    def put_if_absent(self, instance: Instance, owner: int, ttl: float) -> str:
        """Write an instance back unless another owner holds its key: ``"ok"`` or ``"taken"`` (nothing written)."""
        with self._lock:
            entry = self._entry(instance.key)
            if entry is not None and entry.owner != owner:
                return "taken"
            self._put_locked(instance, owner, ttl)
            return "ok"

    def _put_locked(self, instance: Instance, owner: int, ttl: float) -> None:
        entry = _Entry(instance, owner, ttl, time.monotonic() + ttl)
        entries = self._services.setdefault((instance.namespace, instance.service), {})
        replaced = entries.get(instance.id)
        entries[instance.id] = entry
        if replaced is None:
            self._entry_count += 1
        earliest = self._deadlines[0][0] if self._deadlines else None
        heapq.heappush(self._deadlines, (entry.deadline, next(self._sequence), entry))
        self._changed(instance.namespace, instance.service)
        if earliest is None or entry.deadline < earliest:
            self._lock.notify_all()
        if replaced is not None:
            self._compact_if_mostly_leftovers()

    def refresh(self, key: Key, owner: int) -> str:
        """Push an owned entry's deadline forward: ``"ok"``, ``"missing"``, or ``"taken"`` (another owner)."""
        with self._lock:
            entry = self._entry(key)
            if entry is None:
                return "missing"
            if entry.owner != owner:
                return "taken"
            entry.deadline = time.monotonic() + entry.ttl
            return "ok"

    def set_status(self, key: Key, status: Status) -> Instance:
        """Rewrite an entry's status whoever owns it, keeping its owner and deadline; the entry as now stored.

        Raises :class:`NotRegisteredError` when there is no such entry.
        """
        with self._lock:
            entry = self._entry(key)
            if entry is None:
                raise NotRegisteredError(f"{'/'.join(key)} is not registered")
            entry.instance = entry.instance.with_changes(status=status)
            self._changed(key[0], key[1])
            return entry.instance

    def remove(self, key: Key, owner: int | None = None) -> None:
        """Remove an entry (only if ``owner`` owns it, when given)."""
        with self._lock:
            entry = self._entry(key)
            if entry is None or (owner is not None and entry.owner != owner):
                return
            self._delete(key)

    def _delete(self, key: Key) -> None:
        service_key = (key[0], key[1])
        entries = self._services[service_key]
        del entries[key[2]]
        self._entry_count -= 1
        if not entries:
            del self._services[service_key]
        self._changed(key[0], key[1])
        self._compact_if_mostly_leftovers()

    def _compact_if_mostly_leftovers(self) -> None:
        """Rebuild the deadline heap from the live entries once over half of it is removed or replaced ones (each
        rebuild costs the heap's size and at least halves it: O(1) per leftover over time)."""
        if len(self._deadlines) <= 2 * self._entry_count + _COMPACT_SLACK:
            return
        self._deadlines = [item for item in self._deadlines if self._entry(item[2].instance.key) is item[2]]
        heapq.heapify(self._deadlines)

    @property
    def deadlines_held(self) -> int:
        """Items in the deadline heap, leftovers of removed entries included (for tests and inspection)."""
        with self._lock:
            return len(self._deadlines)

    def list(self, namespace: str, service: str) -> tuple[tuple[Instance, ...], int]:
        """The instances of a service and the store revision they were read at."""
        with self._lock:
            entries = self._services.get((namespace, service), {})
            return tuple(e.instance for e in entries.values()), self._revision

    def keys(self) -> frozenset[Key]:
        """Every stored ``(namespace, service, id)``: what the store holds, for inspection and tests."""
        with self._lock:
            return frozenset((ns, svc, i) for (ns, svc), entries in self._services.items() for i in entries)

    def services(self, namespace: str) -> tuple[str, ...]:
        """Service names with at least one instance in ``namespace``."""
        with self._lock:
            return tuple(sorted(svc for (ns, svc) in self._services if ns == namespace))

    def add_watcher(self, key: ServiceKey, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        """Set ``event`` (on ``loop``) whenever the service ``key`` changes."""
        with self._lock:
            self._watchers.setdefault(key, set()).add((loop, event))

    def remove_watcher(self, key: ServiceKey, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        """Stop notifying ``event``."""
        with self._lock:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard((loop, event))
                if not watchers:
                    del self._watchers[key]

    def _changed(self, namespace: str, service: str) -> None:
        self._revision += 1
        for loop, event in list(self._watchers.get((namespace, service), ())):
            if event.is_set():
                # Not read since the last change: its next read sees this one too (a watcher clears the event
                # before it lists, under this lock). Waking its loop again for every write of a burst only makes
                # that thread compete for the GIL with the writers.
                continue
            with contextlib.suppress(RuntimeError):  # that loop is closed; its watcher is gone
                loop.call_soon_threadsafe(event.set)

    def _reap_forever(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                while self._deadlines and self._deadlines[0][0] <= now:
                    _, _, entry = heapq.heappop(self._deadlines)
                    key = entry.instance.key
                    if self._entry(key) is not entry:
                        continue  # replaced or removed since
                    if entry.deadline > now:
                        heapq.heappush(self._deadlines, (entry.deadline, next(self._sequence), entry))
                    else:
                        self._delete(key)
                if not self._deadlines:
                    self._lock.wait()
                else:
                    self._lock.wait(max(_REAPER_GRANULARITY, self._deadlines[0][0] - time.monotonic()))


class DefinitionTable:
    """The durable definitions of one memory store (they live as long as the process), shared by its backends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str, str], bytes] = {}
        self._watchers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def put(self, kind: str, namespace: str, name: str, data: bytes) -> None:
        """Create or replace a definition."""
        with self._lock:
            self._items[(kind, namespace, name)] = bytes(data)
            self._notify()

    def get(self, kind: str, namespace: str, name: str) -> bytes | None:
        """The bytes of a definition, if stored."""
        with self._lock:
            return self._items.get((kind, namespace, name))

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Remove a definition; ``True`` if it existed."""
        with self._lock:
            existed = self._items.pop((kind, namespace, name), None) is not None
            if existed:
                self._notify()
            return existed

    def list(self, kind: str, namespace: str | None) -> tuple[StoredDefinition, ...]:
        """Definitions of a kind, in a namespace or all (``None``), sorted."""
        with self._lock:
            return tuple(
                StoredDefinition(k, ns, name, data)
                for (k, ns, name), data in sorted(self._items.items())
                if k == kind and (namespace is None or ns == namespace)
            )

    def add_watcher(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        """Set ``event`` (on ``loop``) after every change."""
        with self._lock:
            self._watchers.add((loop, event))

    def remove_watcher(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        """Stop notifying ``event``."""
        with self._lock:
            self._watchers.discard((loop, event))

    def _notify(self) -> None:
        for loop, event in list(self._watchers):
            with contextlib.suppress(RuntimeError):  # that loop is closed; its watcher is gone
                loop.call_soon_threadsafe(event.set)


_stores: dict[str, MemoryStore] = {}
_definitions: dict[str, DefinitionTable] = {}
_stores_lock = threading.Lock()
_owner_ids = itertools.count(1)


def memory_store(name: str = "default") -> MemoryStore:
    """The process-wide store called ``name`` (created on first use)."""
    with _stores_lock:
        store = _stores.get(name)
        if store is None:
            store = _stores[name] = MemoryStore(name)
        return store


def memory_definitions(name: str = "default") -> DefinitionTable:
    """The process-wide definitions of the store called ``name``."""
    with _stores_lock:
        found = _definitions.get(name)
        if found is None:
            found = _definitions[name] = DefinitionTable()
        return found


class MemoryDefinitions(DefinitionStore):
    """One memory backend's view of its store's :class:`DefinitionTable` (refused once that backend is closed)."""

    def __init__(self, table: DefinitionTable, check_open: Callable[[], None]) -> None:
        self._table = table
        self._check_open = check_open

    async def _put(self, kind: str, namespace: str, name: str, data: bytes) -> None:
        self._check_open()
        self._table.put(kind, namespace, name, data)

    async def _get(self, kind: str, namespace: str, name: str) -> bytes | None:
        self._check_open()
        return self._table.get(kind, namespace, name)

    async def _delete(self, kind: str, namespace: str, name: str) -> bool:
        self._check_open()
        return self._table.delete(kind, namespace, name)

    async def _list(self, kind: str, namespace: str | None) -> tuple[StoredDefinition, ...]:
        self._check_open()
        return self._table.list(kind, namespace)

    async def _watch(self, kind: str, namespace: str | None) -> AsyncGenerator[DefinitionSnapshot, None]:
        self._check_open()
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        self._table.add_watcher(loop, changed)
        last: tuple[StoredDefinition, ...] | None = None
        try:
            while True:
                changed.clear()
                items = self._table.list(kind, namespace)
                if items != last:
                    last = items
                    yield DefinitionSnapshot(kind, namespace, items)
                await changed.wait()
        finally:
            self._table.remove_watcher(loop, changed)


@dataclass(slots=True)
class _Owned:
    instance: Instance
    ttl: float
    on_state: StateListener
    refreshed_at: float = field(default_factory=time.monotonic)
    #: When the keep-alive next refreshes this entry (a third of its TTL after the last refresh).
    due: float = 0.0


class MemoryBackend(Backend):
    """``memory://[/store]?ttl=seconds``: the embedded backend (one process, several registries).

    Like every backend, its registry's loop calls it; but its writes and reads need no I/O, so they are also offered
    as :attr:`immediate` operations, callable from any thread: the blocking ``Registry`` runs them in the caller's
    thread. ``_lock`` makes each of them atomic with respect to the keep-alive (on the event loop) and to
    :meth:`close`; the store it shares is thread-safe. State listeners are called outside the lock.
    """

    scheme = "memory"

    def __init__(self, store: MemoryStore, default_ttl: float = _DEFAULT_TTL) -> None:
        self._store = store
        self._owner = next(_owner_ids)
        self._lock = threading.Lock()
        self._owned: dict[Key, _Owned] = {}
        self._keepalive: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._next_due = float("inf")
        self._closed = False
        self._definitions = MemoryDefinitions(memory_definitions(store.name), self._check_open)
        self._capabilities = Capabilities(
            name="memory",
            default_ttl=default_ttl,
            min_ttl=_MIN_TTL,
            detection_slack=0.25,
            cross_process=False,
            networked=False,
        )

    @classmethod
    def from_url(cls, url: BackendURL) -> MemoryBackend:
        """``memory://`` (default store) or ``memory:///name``; parameter ``ttl`` (default 10 s)."""
        url.check_parameters({"ttl"})
        name = url.path.strip("/") or (url.endpoints[0].host if url.endpoints else "default")
        return cls(memory_store(name), url.get_float("ttl", _DEFAULT_TTL, minimum=_MIN_TTL))

    @property
    def capabilities(self) -> Capabilities:
        """Memory backend promises: cross-process no; detection within TTL + 0.25 s."""
        return self._capabilities

    @property
    def store(self) -> MemoryStore:
        """The store this backend reads and writes."""
        return self._store

    @property
    def definitions(self) -> MemoryDefinitions:
        """Durable definitions for the life of the process, shared by every backend of the same store."""
        return self._definitions

    @property
    def immediate(self) -> MemoryBackend:
        """This backend itself: every write and read is done in the calling thread, without I/O."""
        return self

    async def start(self) -> None:
        """Start the keep-alive task."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._keepalive = asyncio.create_task(self._keep_alive(), name="discovery-memory-keepalive")

    async def close(self) -> None:
        """Remove every owned entry and stop."""
        with self._lock:
            for key in self._owned:
                self._store.remove(key, self._owner)
            self._owned.clear()
            self._closed = True
        await self.abort()

    async def abort(self) -> None:
        """Stop refreshing; owned entries expire at their deadline, as after a crash."""
        with self._lock:
            self._closed = True
        if self._keepalive is not None:
            await cancel_and_wait(self._keepalive)
            self._keepalive = None

    async def register(self, instance: Instance, ttl: float, on_state: StateListener) -> None:
        """Store the instance and keep it alive."""
        self.register_now(instance, ttl, on_state)

    async def update(self, instance: Instance) -> None:
        """Replace the stored instance, keeping its TTL, if this backend still owns it.

        Removed meanwhile (by someone who is not a registrant): written back, ``LOST`` → ``RESTORED``. Taken over
        by another registrant: ``LOST`` (``TAKEN_OVER``) and :class:`NotRegisteredError`, nothing written.
        """
        self.update_now(instance)

    async def deregister(self, instance: Instance) -> None:
        """Remove the instance."""
        self.deregister_now(instance)

    async def set_status(self, namespace: str, service: str, instance_id: str, status: Status) -> Instance:
        """Rewrite the stored instance's status, whichever backend of this store owns it (its TTL runs on)."""
        self._check_open()
        return self._store.set_status((namespace, service, instance_id), status)

    def adopt(self, instance: Instance) -> None:
        """Keep ``instance`` as what the keep-alive writes back if the entry ever expires under us."""
        with self._lock:
            owned = self._owned.get(instance.key)
            if owned is not None:
                owned.instance = instance

    async def list(self, namespace: str, service: str) -> tuple[Instance, ...]:
        """All instances of a service."""
        return self.list_now(namespace, service)

    async def services(self, namespace: str) -> tuple[str, ...]:
        """Services with instances in a namespace."""
        return self.services_now(namespace)

    def register_now(self, instance: Instance, ttl: float, on_state: StateListener) -> None:
        """:meth:`register` in the calling thread."""
        due = time.monotonic() + ttl / 3
        with self._lock:
            self._check_open()
            self._owned[instance.key] = _Owned(instance, ttl, on_state, due=due)
            self._store.put(instance, self._owner, ttl)
            wake = due < self._next_due
        if wake and self._loop is not None and self._wakeup is not None:
            # Due before the keep-alive's next round: it re-plans its sleep (on its loop, from any thread).
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing is kept alive any more
                self._loop.call_soon_threadsafe(self._wakeup.set)

    def update_now(self, instance: Instance) -> None:
        """:meth:`update` in the calling thread."""
        with self._lock:
            self._check_open()
            owned = self._owned.get(instance.key)
            if owned is None:
                raise NotRegisteredError(f"{'/'.join(instance.key)} is not registered by this backend")
            outcome = self._store.put_owned(instance, self._owner, owned.ttl)
            owned.instance = instance
            if outcome == "ok":
                owned.refreshed_at = time.monotonic()
        if outcome == "missing":
            self._write_back(instance.key, owned, LostReason.REMOVED)
        elif outcome == "taken":
            self._taken_over(instance.key, owned)
        if self._owned.get(instance.key) is not owned:
            raise NotRegisteredError(f"{'/'.join(instance.key)} was taken over by another registrant")

    def deregister_now(self, instance: Instance) -> None:
        """:meth:`deregister` in the calling thread."""
        with self._lock:
            self._owned.pop(instance.key, None)
            self._store.remove(instance.key, self._owner)

    def list_now(self, namespace: str, service: str) -> tuple[Instance, ...]:
        """:meth:`list` in the calling thread."""
        return self._store.list(namespace, service)[0]

    def services_now(self, namespace: str) -> tuple[str, ...]:
        """:meth:`services` in the calling thread."""
        return self._store.services(namespace)

    async def watch(self, namespace: str, service: str) -> AsyncIterator[Snapshot]:
        """The current snapshot, then one per change (changes between two reads are coalesced)."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        key = (namespace, service)
        self._store.add_watcher(key, loop, changed)
        try:
            while True:
                changed.clear()
                instances, revision = self._store.list(namespace, service)
                yield Snapshot(service, namespace, instances, revision)
                await changed.wait()
        finally:
            self._store.remove_watcher(key, loop, changed)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this memory backend is closed")

    async def _keep_alive(self) -> None:
        """Refresh each owned entry a third of its TTL after the last refresh.

        A wake-up (a registration due sooner than the next round) only re-plans the sleep: entries are refreshed
        when due, so registering costs O(1), not a refresh of everything owned.
        """
        assert self._wakeup is not None
        while True:
            now = time.monotonic()
            with self._lock:
                self._next_due = min((o.due for o in self._owned.values()), default=now + _DEFAULT_TTL / 3)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self._next_due - now)):
                    await self._wakeup.wait()
            self._wakeup.clear()
            now = time.monotonic()
            with self._lock:
                # An entry due within half its period is refreshed now too: rounds stay one per half period at
                # most, and no entry goes longer than a third of its TTL without a refresh.
                due = [(key, o) for key, o in self._owned.items() if o.due <= now + o.ttl / 6]
            for key, owned in due:
                with self._lock:  # per entry: a registration from another thread waits for one refresh at most
                    if self._owned.get(key) is not owned:
                        continue  # deregistered or replaced since the round began
                    owned.due = now + owned.ttl / 3
                    outcome = self._store.refresh(key, self._owner)
                    if outcome == "ok":
                        owned.refreshed_at = now
                if outcome == "missing":
                    # Expired while we were still alive (the loop was blocked past the TTL), or removed by someone
                    # who is not a registrant: write it back.
                    late = now - owned.refreshed_at > owned.ttl
                    self._write_back(key, owned, LostReason.EXPIRED if late else LostReason.REMOVED)
                elif outcome == "taken":
                    self._taken_over(key, owned)

    def _write_back(self, key: Key, owned: _Owned, reason: LostReason) -> None:
        owned.on_state(RegistrationState.LOST, reason)
        with self._lock:
            if self._owned.get(key) is not owned:
                return  # deregistered meanwhile (from another thread): nothing to write back
            written = self._store.put_if_absent(owned.instance, self._owner, owned.ttl)
            if written != "taken":
                owned.refreshed_at = time.monotonic()
        if written == "taken":
            self._taken_over(key, owned)  # another registrant wrote the id in between: it owns it now
            return
        owned.on_state(RegistrationState.RESTORED)

    def _taken_over(self, key: Key, owned: _Owned) -> None:
        """Another registrant registered the same id since: it owns the entry now; never touch it again."""
        with self._lock:
            if self._owned.get(key) is owned:
                del self._owned[key]
        owned.on_state(RegistrationState.LOST, LostReason.TAKEN_OVER)
