"""``registry.health()``: a structured status of a registry's backend connection, registrations and watches.

Made for readiness endpoints (a Kubernetes ``readinessProbe``, Spring actuator's ``/health``):
:attr:`RegistryHealth.ready` is the verdict, :attr:`RegistryHealth.problems` says why not in plain words, and
:meth:`RegistryHealth.as_dict` is ready for ``json.dumps``. Building one does no I/O: it reads what the registry
already knows.

Ready means: the backend's connection is ``connected`` or ``reconnected``, every registration is ``registered``
or ``restored``, and no watched service is serving a stale snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from discovery.core.backend import RegistrationState
from discovery.core.connection import ConnectionStatus
from discovery.core.models import Status
from discovery.registry.registration import AsyncRegistration
from discovery.registry.watch_hub import SharedWatch

__all__ = ["RegistrationHealth", "RegistryHealth", "WatchHealth"]

_HEALTHY_REGISTRATION_STATES = frozenset({RegistrationState.REGISTERED, RegistrationState.RESTORED})


@dataclass(frozen=True, slots=True)
class RegistrationHealth:
    """One live registration: its key, state and the status it advertises.

    Immutable: safe to share between threads.
    """

    namespace: str
    service: str
    id: str
    state: RegistrationState
    status: Status
    ttl: float

    @property
    def healthy(self) -> bool:
        """Whether the backend holds it now (``registered`` or ``restored``)."""
        return self.state in _HEALTHY_REGISTRATION_STATES


@dataclass(frozen=True, slots=True)
class WatchHealth:
    """One watched service: whether its snapshot is stale, its revision and instance count.

    Immutable: safe to share between threads.
    """

    namespace: str
    service: str
    stale: bool
    revision: int | None
    instances: int | None
    subscribers: int


@dataclass(frozen=True, slots=True)
class RegistryHealth:
    """What ``registry.health()`` returns.

    Immutable: safe to share between threads.
    """

    backend: str
    closed: bool
    connection: ConnectionStatus | None
    registrations: tuple[RegistrationHealth, ...]
    watches: tuple[WatchHealth, ...]

    @property
    def problems(self) -> tuple[str, ...]:
        """Why the registry is not ready, one sentence each (empty when ready)."""
        found: list[str] = []
        connection = self.connection
        if self.closed:
            found.append("the registry is closed")
        elif connection is None:
            found.append(f"the {self.backend} backend has not connected yet")
        elif not connection.state.usable:
            detail = f" ({connection.detail})" if connection.detail else ""
            found.append(f"the {self.backend} connection is {connection.state.value}{detail}")
        found.extend(
            f"registration {r.namespace}/{r.service}/{r.id} is {r.state.value}"
            for r in self.registrations
            if not r.healthy
        )
        found.extend(f"watch of {w.namespace}/{w.service} is stale" for w in self.watches if w.stale)
        return tuple(found)

    @property
    def ready(self) -> bool:
        """The readiness verdict: no problems."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (states as their string values, times as Unix seconds)."""
        connection = self.connection
        return {
            "ready": self.ready,
            "problems": list(self.problems),
            "backend": self.backend,
            "connection": None
            if connection is None
            else {"state": connection.state.value, "since": connection.since, "detail": connection.detail},
            "registrations": [
                {"namespace": r.namespace, "service": r.service, "id": r.id, "state": r.state.value,
                 "status": r.status.value, "ttl": r.ttl}
                for r in self.registrations
            ],
            "watches": [
                {"namespace": w.namespace, "service": w.service, "stale": w.stale, "revision": w.revision,
                 "instances": w.instances, "subscribers": w.subscribers}
                for w in self.watches
            ],
        }


def registration_health(items: Iterable[AsyncRegistration]) -> tuple[RegistrationHealth, ...]:
    """Health rows for registrations, sorted by key."""
    rows = [
        RegistrationHealth(
            r.instance.namespace, r.instance.service, r.instance.id, r.state, r.instance.status, r.ttl
        )
        for r in items
    ]
    return tuple(sorted(rows, key=lambda row: (row.namespace, row.service, row.id)))


def watch_health(items: Iterable[SharedWatch]) -> tuple[WatchHealth, ...]:
    """Health rows for shared watches, sorted by namespace and service."""
    rows = []
    for watch in items:
        latest = watch.latest
        rows.append(
            WatchHealth(
                watch.namespace,
                watch.service,
                bool(latest is not None and latest.stale),
                None if latest is None else latest.revision,
                None if latest is None else len(latest),
                watch.subscriber_count,
            )
        )
    return tuple(sorted(rows, key=lambda row: (row.namespace, row.service)))
