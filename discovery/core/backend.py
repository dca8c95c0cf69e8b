"""The contract every storage adapter fulfils.

A backend is asyncio-native and owned by one :class:`discovery.AsyncRegistry`, whose event loop calls
every method. The registry does the backend-neutral work (validation, selectors, status filters, the
watch fan-out and its cache, the sync facade); a backend only stores, keeps alive, lists and watches.
Durable definitions are a separate, optional capability: :attr:`Backend.definitions`.

Adapters are found through the ``discovery.backends`` entry-point group by URL scheme, e.g.
``zookeeper = "discovery_zookeeper:ZooKeeperBackend"``.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar, Protocol

from discovery.core.connection import ConnectionMonitor
from discovery.core.definitions import DefinitionStore
from discovery.core.errors import UnsupportedOperationError
from discovery.core.models import Instance, Snapshot, Status
from discovery.core.urls import BackendURL


class RegistrationState(enum.StrEnum):
    """The states a registration goes through; ``LOST`` → ``RESTORED`` may repeat."""

    PENDING = "pending"
    REGISTERED = "registered"
    LOST = "lost"
    RESTORED = "restored"
    DEREGISTERED = "deregistered"


class LostReason(enum.StrEnum):
    """Why a registration is ``LOST``.

    The ownership rule (docs/decisions/session-ownership.md): an instance id has one owner, the registrant whose
    ``register()`` wrote it last. A registration whose id was taken over is told ``TAKEN_OVER`` and stays lost:
    it never writes or deletes that id again. One that expired or was removed by someone who is not a registrant
    is written back by its backend (``LOST`` → ``RESTORED``) within the detection bound.
    """

    #: Our liveness lapsed: session expired, lease gone, or no heartbeat reached the server for a whole TTL.
    EXPIRED = "expired"
    #: The record vanished while we were alive: an operator deleted it, or the server lost its state.
    REMOVED = "removed"
    #: Another registrant registered the same instance id: it owns the id now.
    TAKEN_OVER = "taken-over"


class StateListener(Protocol):
    """Called by a backend, on the registry's event loop, when a registration is lost or restored.

    A backend passes a :class:`LostReason` with every ``LOST``.
    """

    def __call__(self, state: RegistrationState, reason: LostReason | None = None) -> None: ...


class ImmediateOperations(Protocol):
    """Writes and reads a backend completes without I/O, safe to call from any thread (the memory backend).

    The blocking facade calls these in the caller's thread instead of handing the call to the loop thread;
    each means the same as the :class:`Backend` coroutine of the same name without ``_now``.
    """

    def register_now(self, instance: Instance, ttl: float, on_state: StateListener) -> None:
        """:meth:`Backend.register`, done before returning."""

    def update_now(self, instance: Instance) -> None:
        """:meth:`Backend.update`, done before returning."""

    def deregister_now(self, instance: Instance) -> None:
        """:meth:`Backend.deregister`, done before returning."""

    def list_now(self, namespace: str, service: str) -> tuple[Instance, ...]:
        """:meth:`Backend.list`, done before returning."""

    def services_now(self, namespace: str) -> tuple[str, ...]:
        """:meth:`Backend.services`, done before returning."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend promises; the conformance suite holds it to these numbers.

    The worst-case time for a dead registrant's instance to leave lookups and watches is
    ``effective_ttl + detection_slack`` seconds.

    Immutable: safe to share between threads.
    """

    name: str
    default_ttl: float
    min_ttl: float
    detection_slack: float
    #: Whether the TTL can differ per registration (ZooKeeper: no, the session timeout applies to all).
    ttl_per_registration: bool = True
    #: Whether registrants in other processes are visible (the in-memory backend: no).
    cross_process: bool = True
    #: Whether the backend can lose a connection (and must then mark watch snapshots stale).
    networked: bool = True


class Backend(abc.ABC):
    """Abstract adapter. Subclasses set :attr:`scheme` and implement every abstract method.

    Rules every implementation keeps (the conformance kit checks them):

    * ``register`` writes the instance, replacing whatever holds its key (the last registrant owns an id), and
      keeps it alive until ``deregister``/``close``; if the server forgets it (session expiry, lease loss, agent
      restart) or someone who is not a registrant removes it, the backend writes it again by itself within the
      detection bound and calls ``on_state(LOST, reason)`` then ``on_state(RESTORED)``.
    * A registration whose key another registrant took over gets ``on_state(LOST, LostReason.TAKEN_OVER)`` and
      is forgotten: its backend never writes, heals or deletes that key again (``update`` raises
      ``NotRegisteredError``, ``deregister`` removes nothing). Every write and delete checks ownership.
    * ``watch`` yields the current :class:`Snapshot` first, then a new full snapshot after every change
      (bursts may be coalesced), forever. While the server is unreachable it yields the last set with
      ``stale=True`` and, once back, re-lists so that no change is missed. ``revision`` may be the
      backend's own; the registry re-stamps it.
    * ``close`` deregisters everything this backend registered; ``abort`` stops keeping registrations
      alive and drops connections *without* deregistering, as a crashed process would.
    * Reads never see another service's keys (``api`` vs ``api-v2``) or another namespace's.
    * Instances that cannot be decoded (written by a foreign tool) are skipped, never fatal.

    Not thread-safe: only the event loop of the registry that owns it calls it (``connection.status`` may be read
    from any thread).
    """

    scheme: ClassVar[str]
    _connection_monitor: ConnectionMonitor | None = None

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: BackendURL) -> Backend:
        """Build an unstarted backend from a URL; raise ``ConfigurationError`` for unknown parameters."""

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """What this backend promises."""

    @property
    def connection(self) -> ConnectionMonitor:
        """This backend's connection state and its listeners (see :mod:`discovery.core.connection`).

        The registry reports the first contact after :meth:`start`; adapters report failures, contact again,
        and a lost session. Unless told otherwise, ``suspended`` for longer than the default TTL plus the
        detection slack counts as ``lost``: every registration with the default TTL is gone by then.
        """
        monitor = self._connection_monitor
        if monitor is None:
            caps = self.capabilities
            lost_after = caps.default_ttl + caps.detection_slack if caps.networked else None
            monitor = self._connection_monitor = ConnectionMonitor(caps.name, lost_after=lost_after)
        return monitor

    def effective_ttl(self, requested: float | None) -> float:
        """The TTL a registration really gets for a requested one (``None`` = the default)."""
        caps = self.capabilities
        if requested is None or not caps.ttl_per_registration:
            return caps.default_ttl
        return max(requested, caps.min_ttl)

    def detection_bound(self, ttl: float | None = None) -> float:
        """Worst-case seconds for a dead registrant's instance to disappear, for a requested TTL."""
        return self.effective_ttl(ttl) + self.capabilities.detection_slack

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect. Raise ``BackendUnavailableError`` if the server cannot be reached in time."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Deregister everything this backend registered, then disconnect."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Stop keep-alives and disconnect without deregistering (simulates a crash)."""

    @abc.abstractmethod
    async def register(self, instance: Instance, ttl: float, on_state: StateListener) -> None:
        """Write ``instance`` (replacing one with the same key) and keep it alive with ``ttl``."""

    @abc.abstractmethod
    async def update(self, instance: Instance) -> None:
        """Rewrite a registered instance (same key) with new field values, keeping it alive."""

    @abc.abstractmethod
    async def deregister(self, instance: Instance) -> None:
        """Remove a registered instance and stop keeping it alive. Removing a missing one is not an error."""

    @abc.abstractmethod
    async def list(self, namespace: str, service: str) -> tuple[Instance, ...]:
        """A fresh read of all instances of a service (every status)."""

    @abc.abstractmethod
    async def services(self, namespace: str) -> tuple[str, ...]:
        """The names of services with at least one instance in a namespace, sorted."""

    @abc.abstractmethod
    def watch(self, namespace: str, service: str) -> AsyncIterator[Snapshot]:
        """Yield the current snapshot, then one after every change; see the class rules."""

    async def set_status(self, namespace: str, service: str, instance_id: str, status: Status) -> Instance:
        """Set the status of an instance whoever registered it (an operator draining it from another process),
        through the backend's own mechanism and keeping its owner's liveness (lease, session, checks).

        Returns the instance as now stored. Raises :class:`~discovery.core.errors.NotRegisteredError` when no such
        instance is registered and :class:`~discovery.core.errors.UnsupportedOperationError` when it is read-only
        (written by another tool) or the backend cannot change it. The owner learns it through its registry, which
        follows its own records and calls :meth:`adopt`. The default refuses.
        """
        raise UnsupportedOperationError(
            f"the {self.capabilities.name} backend cannot change the status of another registrant's instance"
        )

    def adopt(self, instance: Instance) -> None:
        """Someone else rewrote one of this backend's registrations (``set_status`` from another process): keep
        ``instance`` as what to write back when healing (after a lost session, lease or agent), without writing now.

        Called by the owning registry on its event loop. The default does nothing; a backend that heals from its
        own copy then writes the old fields back at its next heal.
        """
        return None

    @property
    def definitions(self) -> DefinitionStore | None:
        """Durable definitions (Services, ...) in this backend, or ``None`` when it cannot store them.

        See :mod:`discovery.core.definitions`; the default is ``None``, so a third-party backend without them
        keeps working and says clearly what it lacks.
        """
        return None

    @property
    def immediate(self) -> ImmediateOperations | None:
        """The same operations without I/O and callable from any thread, or ``None`` (the default: every
        networked backend). The blocking facade uses them to answer in the caller's thread.
        """
        return None
