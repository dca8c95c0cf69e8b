"""The handle ``register()`` returns: it keeps its instance alive and reports lost/restored."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from discovery.core.backend import LostReason, RegistrationState
from discovery.core.errors import NotRegisteredError, ValidationError
from discovery.core.models import Instance

log = logging.getLogger("discovery.registry.registration")

StateCallback = Callable[["AsyncRegistration", RegistrationState], None]

#: Fields ``update()`` may change; the identity (service, namespace, id) never changes.
UPDATABLE_FIELDS = frozenset({"address", "port", "labels", "ports", "status", "weight", "zone"})


class AsyncRegistration:
    """A live registration. States: ``registered``, then ``lost``/``restored`` as the backend heals it,
    and ``deregistered`` at the end. Subscribe with :meth:`on_change` or wait with :meth:`wait_for`.
    """

    def __init__(
        self,
        instance: Instance,
        ttl: float,
        detection_bound: float,
        update: Callable[[AsyncRegistration, Instance], Awaitable[None]],
        deregister: Callable[[AsyncRegistration], Awaitable[None]],
    ) -> None:
        self._instance = instance
        self._ttl = ttl
        self._detection_bound = detection_bound
        self._update = update
        self._deregister = deregister
        self._state = RegistrationState.PENDING
        self._lost_reason: LostReason | None = None
        self._history: list[RegistrationState] = []
        self._callbacks: list[StateCallback] = []
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        key = "/".join(self._instance.key)
        return f"<Registration {key} {self._state.value}>"

    @property
    def instance(self) -> Instance:
        """The instance as last written."""
        return self._instance

    @property
    def ttl(self) -> float:
        """The TTL the backend keeps this registration alive with (seconds)."""
        return self._ttl

    @property
    def detection_bound(self) -> float:
        """Worst-case seconds for this instance to disappear after its process dies."""
        return self._detection_bound

    @property
    def state(self) -> RegistrationState:
        """The current state."""
        return self._state

    @property
    def lost_reason(self) -> LostReason | None:
        """Why the registration was last ``LOST`` (``None`` if it never was). ``TAKEN_OVER`` is final: another
        registrant owns the instance id, and this registration never writes it again.
        """
        return self._lost_reason

    @property
    def history(self) -> tuple[RegistrationState, ...]:
        """Every state this registration has been in, in order."""
        return tuple(self._history)

    @property
    def active(self) -> bool:
        """Whether the registration is still kept alive (not deregistered)."""
        return self._state is not RegistrationState.DEREGISTERED

    def on_change(self, callback: StateCallback) -> Callable[[], None]:
        """Call ``callback(registration, state)`` on every state change (on the registry's loop).

        Returns a function that removes the callback.
        """
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    async def wait_for(self, state: RegistrationState, timeout: float | None = None) -> None:
        """Wait until the registration has been in ``state`` (now or since it was created)."""
        async with asyncio.timeout(timeout):
            while state not in self._history:
                self._changed.clear()
                await self._changed.wait()

    async def update(self, **changes: Any) -> Instance:
        """Rewrite the instance with some fields changed (``status=``, ``labels=``, ``weight=``, …).

        Raises :class:`ValidationError` (nothing written) for an unknown field or a bad value.
        """
        unknown = set(changes) - UPDATABLE_FIELDS
        if unknown:
            raise ValidationError(
                sorted(unknown)[0], f"cannot be updated (updatable: {', '.join(sorted(UPDATABLE_FIELDS))})"
            )
        if not self.active:
            raise NotRegisteredError(f"{self!r} is deregistered")
        updated = self._instance.with_changes(**changes)
        await self._update(self, updated)
        self._instance = updated
        return updated

    async def deregister(self) -> None:
        """Remove the instance from the registry and stop keeping it alive (idempotent)."""
        if not self.active:
            return
        await self._deregister(self)

    def _set_state(self, state: RegistrationState, reason: LostReason | None = None) -> None:
        if self._state is RegistrationState.DEREGISTERED:
            return
        if state is RegistrationState.LOST:
            self._lost_reason = reason
        self._state = state
        self._history.append(state)
        self._changed.set()
        for callback in list(self._callbacks):
            try:
                callback(self, state)
            except Exception:
                log.exception("state callback of %r failed", self)
