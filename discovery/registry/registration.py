"""The handle ``register()`` returns: it keeps its instance alive and reports lost/restored.

A registration's state lives in a :class:`RegistrationStates` that only its registry (and, through the listener
the registry hands over, the backend) writes; the :class:`AsyncRegistration` users hold only reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from discovery.core.backend import RegistrationState
from discovery.core.errors import NotRegisteredError, ValidationError
from discovery.core.models import Instance

log = logging.getLogger("discovery.registry.registration")

StateCallback = Callable[["AsyncRegistration", RegistrationState], None]

#: Fields ``update()`` may change; the identity (service, namespace, id) never changes.
UPDATABLE_FIELDS = frozenset({"address", "port", "labels", "ports", "status", "weight", "zone"})


class RegistrationStates:
    """The state and history of one registration, and who is told about changes.

    :meth:`enter` is the one way to change the state; once ``DEREGISTERED`` it changes no more. It may be
    called from any thread: the state changes at once, observers (:meth:`observe`) are told in that thread, and
    listeners and waiters on ``loop`` (the registry's), in order.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._state = RegistrationState.PENDING
        self._history: list[RegistrationState] = []
        self._listeners: list[Callable[[RegistrationState], None]] = []
        self._observers: list[Callable[[RegistrationState, RegistrationState | None], None]] = []
        self._changed = asyncio.Event()
        self._loop = loop
        self._lock = threading.Lock()
        self._waiting = 0  # wait_for calls parked on _changed

    @property
    def state(self) -> RegistrationState:
        """The current state."""
        return self._state

    @property
    def history(self) -> tuple[RegistrationState, ...]:
        """Every state entered so far, in order."""
        return tuple(self._history)

    def enter(self, state: RegistrationState) -> None:
        """Move to ``state`` and tell every listener (a listener's failure is logged, never raised)."""
        with self._lock:
            if self._state is RegistrationState.DEREGISTERED:
                return
            previous = self._history[-1] if self._history else None
            self._state = state
            self._history.append(state)
            listeners = list(self._listeners)  # those listening now; one added later hears only later states
            quiet = not listeners and not self._waiting
        for observer in self._observers:
            try:
                observer(state, previous)
            except Exception:
                log.exception("registration state observer failed")
        if quiet:
            return  # nobody to tell (a waiter that comes later finds the state in the history)
        if self._loop is not None and not _running_on(self._loop):
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there, tell listeners here
                self._loop.call_soon_threadsafe(self._tell, state, listeners)
                return
        self._tell(state, listeners)

    def _tell(self, state: RegistrationState, listeners: list[Callable[[RegistrationState], None]]) -> None:
        self._changed.set()
        for listener in listeners:
            try:
                listener(state)
            except Exception:
                log.exception("registration state listener failed")

    def observe(self, observer: Callable[[RegistrationState, RegistrationState | None], None]) -> None:
        """Call ``observer(state, previous)`` on every change, at once in the thread that enters it (keep it
        thread-safe and cheap: the registry's log line and metrics hand-off)."""
        self._observers.append(observer)

    def listen(self, listener: Callable[[RegistrationState], None]) -> Callable[[], None]:
        """Call ``listener(state)`` on every change; returns a function that removes it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def wait_for(self, state: RegistrationState) -> None:
        """Wait until ``state`` has been entered (now or earlier)."""
        while True:
            with self._lock:
                if state in self._history:
                    return
                self._changed.clear()
                self._waiting += 1
            try:
                await self._changed.wait()
            finally:
                with self._lock:
                    self._waiting -= 1


def _running_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


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
        *,
        update_now: Callable[[AsyncRegistration, Instance], None] | None = None,
        deregister_now: Callable[[AsyncRegistration], None] | None = None,
    ) -> None:
        self._instance = instance
        self._ttl = ttl
        self._detection_bound = detection_bound
        self._update = update
        self._deregister = deregister
        self._update_now = update_now
        self._deregister_now = deregister_now
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
        updated = self._changed(changes)
        await self._update(self, updated)
        self._instance = updated
        return updated

    async def deregister(self) -> None:
        """Remove the instance from the registry and stop keeping it alive (idempotent)."""
        if not self.active:
            return
        await self._deregister(self)

    @property
    def immediate(self) -> bool:
        """Whether :meth:`update_now` and :meth:`deregister_now` work: the backend writes without I/O."""
        return self._update_now is not None and self._deregister_now is not None

    def update_now(self, **changes: Any) -> Instance:
        """:meth:`update`, done before returning, from any thread; only when :attr:`immediate`."""
        if self._update_now is None:
            raise RuntimeError("this backend needs I/O to update; await update() instead")
        updated = self._changed(changes)
        self._update_now(self, updated)
        self._instance = updated
        return updated

    def deregister_now(self) -> None:
        """:meth:`deregister`, done before returning, from any thread; only when :attr:`immediate`."""
        if self._deregister_now is None:
            raise RuntimeError("this backend needs I/O to deregister; await deregister() instead")
        if self.active:
            self._deregister_now(self)

    def _changed(self, changes: dict[str, Any]) -> Instance:
        unknown = set(changes) - UPDATABLE_FIELDS
        if unknown:
            raise ValidationError(
                sorted(unknown)[0], f"cannot be updated (updatable: {', '.join(sorted(UPDATABLE_FIELDS))})"
            )
        if not self.active:
            raise NotRegisteredError(f"{self!r} is deregistered")
        return self._instance.with_changes(**changes)
