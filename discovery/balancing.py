"""Load balancers: pick one instance out of a snapshot's set.

A balancer works on an immutable tuple of instances and keeps only its own small state, so a pick runs in
the caller's thread without any lock on the registry.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Sequence
from typing import Protocol

from discovery.errors import DiscoveryError
from discovery.models import Instance


class NoInstanceAvailableError(DiscoveryError, LookupError):
    """There is no instance to pick from."""


class Balancer(Protocol):
    """Chooses one instance; raises :class:`NoInstanceAvailableError` when there is none."""

    def pick(self, instances: Sequence[Instance], key: str | None = None) -> Instance:
        """Pick one of ``instances`` (``key`` is for balancers that hash it)."""
        ...


class RoundRobin:
    """Each instance in turn (ordered by id, so every client walks the same cycle)."""

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def pick(self, instances: Sequence[Instance], key: str | None = None) -> Instance:
        """The next instance in the cycle."""
        if not instances:
            raise NoInstanceAvailableError("no instance to pick from")
        with self._lock:
            turn = next(self._counter)
        return instances[turn % len(instances)]


class RandomChoice:
    """A uniformly random instance."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def pick(self, instances: Sequence[Instance], key: str | None = None) -> Instance:
        """A random instance."""
        if not instances:
            raise NoInstanceAvailableError("no instance to pick from")
        return self._random.choice(instances)
