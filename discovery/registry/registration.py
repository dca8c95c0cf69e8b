"""The handle ``register()`` returns: it keeps its instance alive and reports lost/restored.

A registration's state lives in a :class:`RegistrationStates` that only its registry (and, through the listener
the registry hands over, the backend) writes; the :class:`AsyncRegistration` users hold only reads it. Likewise its
instance lives in a :class:`RegistrationRecord`: what the registration last wrote, or adopted when someone else
rewrote it (an operator's ``discovery drain``), which only the registry writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
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

    :meth:`enter` is the one way to change the state; once ``DEREGISTERED`` it changes no more. It may be
    called from any thread: the state changes at once, observers (:meth:`observe`) are told in that thread, and
    listeners and waiters on ``loop`` (the registry's), in order.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._state = RegistrationState.PENDING
        self._lost_reason: LostReason | None = None
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

    @property
    def lost_reason(self) -> LostReason | None:
        """Why the registration was last ``LOST`` (``None`` if it never was)."""
        return self._lost_reason

    def enter(self, state: RegistrationState, reason: LostReason | None = None) -> None:
        """Move to ``state`` (``LOST`` with its ``reason``) and tell every listener (a listener's failure is
        logged, never raised).
        """
        with self._lock:
            if self._state is RegistrationState.DEREGISTERED:
                return
            if state is RegistrationState.LOST:
                self._lost_reason = reason
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
        thread-safe and cheap: the registry's log line and metrics)."""
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


#: Seconds after one of its own writes during which a registry reads a different record as its watch lagging
#: behind, not as someone else's change (it looks again when they are over).
OWN_WRITE_GRACE = 5.0

InstanceListener = Callable[[Instance], None]


class RegistrationRecord:
    """The instance a registration last wrote or adopted, its own writes in flight, and who is told about adoptions.

    The registry writes it: :meth:`written` after each of the registration's own writes, :meth:`adopt` when the
    record in the backend was changed by someone else (see :mod:`discovery.registry.follow`). Not thread-safe: used
    on the registry's event loop (reading :attr:`instance` from another thread is safe: it is one immutable value).
    """

    def __init__(self, instance: Instance) -> None:
        self._instance = instance
        self._listeners: list[InstanceListener] = []
        #: Writes of the owner in flight: meanwhile the backend may show the record before or after them.
        self.writing = 0
        #: Until this ``time.monotonic()``, a record that differs may be the watch lagging behind our own write.
        self.settling_until = time.monotonic() + OWN_WRITE_GRACE

    @property
    def instance(self) -> Instance:
        """The instance as last written or adopted."""
        return self._instance

    def written(self, instance: Instance) -> None:
        """The owner wrote ``instance``."""
        self._instance = instance
        self.settling_until = time.monotonic() + OWN_WRITE_GRACE

    def confirmed(self) -> None:
        """The backend showed the record as last written: a later difference is someone else's change."""
        self.settling_until = 0.0

    def settling(self) -> bool:
        """Whether a different record may still be the backend lagging behind the owner's own write."""
        return self.writing > 0 or time.monotonic() < self.settling_until

    def adopt(self, instance: Instance) -> None:
        """Someone else changed the record to ``instance``: take it as ours and tell every listener."""
        self._instance = instance
        self.settling_until = 0.0
        for listener in list(self._listeners):
            try:
                listener(instance)
            except Exception:
                log.exception("instance change listener failed")

    def listen(self, listener: InstanceListener) -> Callable[[], None]:
        """Call ``listener(instance)`` on every adoption; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove


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
        record: RegistrationRecord | None = None,
        *,
        update_now: Callable[[AsyncRegistration, Instance], None] | None = None,
        deregister_now: Callable[[AsyncRegistration], None] | None = None,
    ) -> None:
        self._record = record if record is not None else RegistrationRecord(instance)
        self._ttl = ttl
        self._detection_bound = detection_bound
        self._update = update
        self._deregister = deregister
        self._update_now = update_now
        self._deregister_now = deregister_now
        self._states = states

    def __repr__(self) -> str:
        key = "/".join(self._record.instance.key)
        return f"<Registration {key} {self._states.state.value}>"

    @property
    def instance(self) -> Instance:
        """The instance as last written, or as someone else rewrote it (see :meth:`on_instance_change`)."""
        return self._record.instance

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

    def on_instance_change(self, callback: Callable[[AsyncRegistration, Instance], None]) -> Callable[[], None]:
        """Call ``callback(registration, instance)`` when someone else changed this registration's record (an
        operator's ``discovery drain`` or ``set-status``) and the registration adopted it, on the registry's loop.

        From then on :attr:`instance` is the changed one, :meth:`update` starts from it, and the backend writes it
        back if it ever heals the registration. Returns a function that removes the callback.
        """
        return self._record.listen(lambda instance: callback(self, instance))

    async def wait_for(self, state: RegistrationState, timeout: float | None = None) -> None:
        """Wait until the registration has been in ``state`` (now or since it was created)."""
        async with asyncio.timeout(timeout):
            await self._states.wait_for(state)

    async def update(self, **changes: Any) -> Instance:
        """Rewrite the instance with some fields changed (``status=``, ``labels=``, ``weight=``, …).

        Raises :class:`ValidationError` (nothing written) for an unknown field or a bad value.
        """
        updated = self._changed(changes)
        self._record.writing += 1
        try:
            await self._update(self, updated)
        finally:
            self._record.writing -= 1
        self._record.written(updated)
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
        self._record.written(updated)
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
        return self._record.instance.with_changes(**changes)
