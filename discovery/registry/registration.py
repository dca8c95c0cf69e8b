"""The handle ``register()`` returns: it keeps its instance alive and reports lost/restored.

A registration's state lives in a :class:`RegistrationStates` that only its registry (and, through the listener
the registry hands over, the backend) writes; the :class:`AsyncRegistration` users hold only reads it.
"""

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


class RegistrationStates:
    """The state and history of one registration, and who is told about changes.

    :meth:`enter` is the one way to change the state; once ``DEREGISTERED`` it changes no more.
    """

    def __init__(self) -> None:
        self._state = RegistrationState.PENDING
        self._lost_reason: LostReason | None = None
        self._history: list[RegistrationState] = []
        self._listeners: list[Callable[[RegistrationState], None]] = []
        self._changed = asyncio.Event()

    @property
    def state(self) -> RegistrationState:
        """The current state."""
        return self._state

    @property
    def history(self) -> tuple[RegistrationState, ...]:
        """Every state entered so far, in order."""
        return tuple(self._history)

    @property
    def lost_reason(self) -> LostReason | None:
        """Why the registration was last ``LOST`` (``None`` if it never was)."""
        return self._lost_reason

    def enter(self, state: RegistrationState, reason: LostReason | None = None) -> None:
        """Move to ``state`` (``LOST`` with its ``reason``) and tell every listener (a listener's failure is
        logged, never raised).
        """
        if self._state is RegistrationState.DEREGISTERED:
            return
        if state is RegistrationState.LOST:
            self._lost_reason = reason
        self._state = state
        self._history.append(state)
        self._changed.set()
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                log.exception("registration state listener failed")

    def listen(self, listener: Callable[[RegistrationState], None]) -> Callable[[], None]:
        """Call ``listener(state)`` on every change; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def wait_for(self, state: RegistrationState) -> None:
        """Wait until ``state`` has been entered (now or earlier)."""
        while state not in self._history:
            self._changed.clear()
            await self._changed.wait()


class AsyncRegistration:
    """A live registration. States: ``registered``, then ``lost``/``restored`` as the backend heals it,
    and ``deregistered`` at the end. Subscribe with :meth:`on_change` or wait with :meth:`wait_for`.

    Not thread-safe: use it on the registry's event loop (the blocking :class:`~discovery.Registration` wraps it for
    threads); ``state`` and ``instance`` may be read from any thread.
    """

    def __init__(
        self,
        instance: Instance,
        ttl: float,
        detection_bound: float,
        update: Callable[[AsyncRegistration, Instance], Awaitable[None]],
        deregister: Callable[[AsyncRegistration], Awaitable[None]],
        states: RegistrationStates,
    ) -> None:
        self._instance = instance
        self._ttl = ttl
        self._detection_bound = detection_bound
        self._update = update
        self._deregister = deregister
        self._states = states

    def __repr__(self) -> str:
        key = "/".join(self._instance.key)
        return f"<Registration {key} {self._states.state.value}>"

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
        return self._states.state

    @property
    def lost_reason(self) -> LostReason | None:
        """Why the registration was last ``LOST`` (``None`` if it never was). ``TAKEN_OVER`` is final: another
        registrant owns the instance id, and this registration never writes it again.
        """
        return self._states.lost_reason

    @property
    def history(self) -> tuple[RegistrationState, ...]:
        """Every state this registration has been in, in order."""
        return self._states.history

    @property
    def active(self) -> bool:
        """Whether the registration is still kept alive (not deregistered)."""
        return self._states.state is not RegistrationState.DEREGISTERED

    def on_change(self, callback: StateCallback) -> Callable[[], None]:
        """Call ``callback(registration, state)`` on every state change (on the registry's loop).

        Returns a function that removes the callback.
        """
        return self._states.listen(lambda state: callback(self, state))

    async def wait_for(self, state: RegistrationState, timeout: float | None = None) -> None:
        """Wait until the registration has been in ``state`` (now or since it was created)."""
        async with asyncio.timeout(timeout):
            await self._states.wait_for(state)

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
