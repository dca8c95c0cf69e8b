"""Failure feedback: callers report errors and successes; an instance that fails too often is set aside.

This is Curator's ``DownInstancePolicy``: an instance with ``error_threshold`` errors within ``window``
seconds is *down* for ``cooldown`` seconds after its last error (defaults: 2 errors, 30 s, 30 s). A success
clears its errors. The :class:`~discovery.client.cache.ServiceCache` leaves down instances out of its picks, but
never all of them: when every candidate is down, it picks from the full set again.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from discovery.core.errors import ValidationError
from discovery.core.models import Instance

__all__ = ["DownInstancePolicy", "FailureTracker", "InstanceEndpoint"]

#: What identifies an endpoint for failure accounting: an instance re-registered elsewhere starts clean.
InstanceEndpoint = tuple[str, str, str, str, int]


def endpoint_of(instance: Instance) -> InstanceEndpoint:
    """The failure-accounting identity of an instance: its key plus address and port."""
    return (instance.namespace, instance.service, instance.id, instance.address, instance.port)


@dataclass(frozen=True, slots=True)
class DownInstancePolicy:
    """When an instance counts as down (Curator's defaults: 2 errors in 30 s, down for 30 s).

    Immutable: safe to share between threads.
    """

    error_threshold: int = 2
    window: float = 30.0
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.error_threshold, bool) or not isinstance(self.error_threshold, int):
            raise ValidationError("error_threshold", "must be an integer")
        if self.error_threshold < 1:
            raise ValidationError("error_threshold", f"must be at least 1, got {self.error_threshold}")
        for name in ("window", "cooldown"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValidationError(name, f"must be a positive number of seconds, got {value!r}")


class FailureTracker:
    """Counts errors per instance under a :class:`DownInstancePolicy`. Thread-safe.

    ``clock`` (default :func:`time.monotonic`) is injectable so the policy can be tested without waiting.
    """

    def __init__(
        self, policy: DownInstancePolicy | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy if policy is not None else DownInstancePolicy()
        self.clock = clock
        self._lock = threading.Lock()
        self._errors: dict[InstanceEndpoint, deque[float]] = {}
        self._down_until: dict[InstanceEndpoint, float] = {}

    def note_error(self, instance: Instance) -> bool:
        """Record a failed call to ``instance``. Returns True when this error made it (or kept it) down."""
        now = self.clock()
        endpoint = endpoint_of(instance)
        policy = self.policy
        with self._lock:
            errors = self._errors.setdefault(endpoint, deque())
            errors.append(now)
            while errors and errors[0] <= now - policy.window:
                errors.popleft()
            while len(errors) > policy.error_threshold:
                errors.popleft()
            if len(errors) >= policy.error_threshold:
                self._down_until[endpoint] = now + policy.cooldown
                return True
            return False

    def note_success(self, instance: Instance) -> bool:
        """Record a successful call: the instance's errors are forgotten. Returns True if it was down."""
        endpoint = endpoint_of(instance)
        with self._lock:
            self._errors.pop(endpoint, None)
            return self._down_until.pop(endpoint, None) is not None

    def is_down(self, instance: Instance) -> bool:
        """Whether ``instance`` is in its cool-down now."""
        until = self._down_until.get(endpoint_of(instance))
        return until is not None and until > self.clock()

    def down(self) -> dict[InstanceEndpoint, float]:
        """Every endpoint in its cool-down, with the clock time it ends (expired entries are dropped)."""
        now = self.clock()
        with self._lock:
            expired = [endpoint for endpoint, until in self._down_until.items() if until <= now]
            for endpoint in expired:
                del self._down_until[endpoint]
                self._errors.pop(endpoint, None)
            return dict(self._down_until)
