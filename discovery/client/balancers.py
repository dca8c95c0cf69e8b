"""Load balancers: pick one instance out of an immutable tuple of instances.

Every balancer implements one method, ``pick(instances, key=None)``. The :class:`~discovery.client.cache.ServiceCache`
hands a balancer the *same tuple object* until the service changes, so a balancer that needs a derived
structure (a weighted cycle, a hash ring, a zone split) builds it once per tuple and finds it again with an
identity check; a pick is then an index or a bisect, with no lock on the registry.

Balancers that want to know about requests in flight (:class:`PowerOfTwoChoices`) also implement
:class:`RequestTracking`; callers that make requests (the httpx transports) call ``started``/``finished``.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
import threading
from collections.abc import Callable, Sequence
from functools import reduce
from typing import Generic, Protocol, TypeVar, runtime_checkable

from discovery.core.errors import DiscoveryError, ValidationError
from discovery.core.models import Instance

__all__ = [
    "Balancer",
    "BalancerFactory",
    "BalancerSpec",
    "ConsistentHash",
    "NoInstanceAvailableError",
    "PowerOfTwoChoices",
    "RandomChoice",
    "RequestTracking",
    "RoundRobin",
    "WeightedRoundRobin",
    "ZoneAware",
    "balancer_factory",
]

D = TypeVar("D")


class NoInstanceAvailableError(DiscoveryError, LookupError):
    """There is no instance to pick from."""


class Balancer(Protocol):
    """Chooses one instance; raises :class:`NoInstanceAvailableError` when there is none.

    ``instances`` is ordered by id and must be treated as immutable. Implementations must be thread-safe: a
    cache's picks come from every thread that calls it.
    """

    def pick(self, instances: Sequence[Instance], key: str | None = None) -> Instance:
        """Pick one of ``instances`` (``key`` is for balancers that hash it)."""
        ...


@runtime_checkable
class RequestTracking(Protocol):
    """A balancer that wants to be told when a request to an instance starts and finishes.

    Implementations must be thread-safe: ``started``/``finished`` come from the threads making requests.
    """

    def started(self, instance: Instance) -> None:
        """A request to ``instance`` has started."""
        ...

    def finished(self, instance: Instance) -> None:
        """A request to ``instance`` has finished (successfully or not)."""
        ...


#: Makes a fresh balancer (a class such as ``RoundRobin`` is one).
BalancerFactory = Callable[[], Balancer]
#: What every ``balancer=`` argument takes: a balancer instance or a factory of them.
BalancerSpec = Balancer | BalancerFactory


def _has_pick(value: object) -> bool:
    return not isinstance(value, type) and callable(getattr(value, "pick", None))


def balancer_factory(spec: object, argument: str = "balancer") -> BalancerFactory:
    """The factory behind a ``balancer=`` argument, checked now rather than at the first pick.

    ``spec`` is a balancer instance (anything with a ``pick(instances, key)`` method; the factory returns that
    same object every time, so it is shared) or a factory (a class such as ``RoundRobin``, or any callable
    without arguments) returning one. A factory is called once here to check what it makes. Anything else
    raises ``TypeError`` naming ``argument``.
    """
    if _has_pick(spec):
        instance: Balancer = spec  # type: ignore[assignment]  # checked just above: it has a pick method
        return lambda: instance
    if not callable(spec):
        raise TypeError(
            f"{argument} must be a balancer (an object with a pick(instances, key) method, e.g. RoundRobin())"
            f" or a factory making one (e.g. RoundRobin), got {type(spec).__name__} {spec!r:.60}"
        )
    name = getattr(spec, "__qualname__", None) or repr(spec)
    try:
        made = spec()
    except TypeError as error:
        raise TypeError(
            f"{argument}: the factory {name} cannot be called without arguments ({error}); pass an instance"
            f" (e.g. {name}(...)) or a function returning one"
        ) from None
    if not _has_pick(made):
        raise TypeError(f"{argument}: the factory {name} made {type(made).__name__}, which has no pick() method")
    return spec  # checked just above: it makes balancers


def _require(instances: Sequence[Instance]) -> None:
    if not instances:
        raise NoInstanceAvailableError("no instance to pick from")


class _PerTuple(Generic[D]):
    """A value derived from one instance tuple, rebuilt when a different tuple comes in.

    Only tuples are remembered. The (tuple, value) pair lives in one attribute, so readers in other threads
    see a consistent pair; two threads racing on a new tuple both compute it, which is harmless.
    """

    def __init__(self, build: Callable[[Sequence[Instance]], D]) -> None:
        self._build = build
        self._memo: tuple[Sequence[Instance], D] | None = None

    def get(self, instances: Sequence[Instance]) -> D:
        memo = self._memo
        if memo is not None and memo[0] is instances:
            return memo[1]
        value = self._build(instances)
        if isinstance(instances, tuple):  # a list could change in place under the same identity
            self._memo = (instances, value)
        return value


class RoundRobin:
    """Each instance in turn (ordered by id, so every client walks the same cycle).

    Thread-safe: the counter is one C call under the GIL.
    """

    def __init__(self) -> None:
        # next() on itertools.count is one C call under the GIL, so the counter needs no lock.
        self._counter = itertools.count()

    def pick(self, instances: Sequence[Instance], key: str | None = None) -> Instance:
        """The next instance in the cycle."""
        if not instances:
            raise NoInstanceAvailableError("no instance to pick from")
        return instances[next(self._counter) % len(instances)]


class RandomChoice:
    """A uniformly random instance (``seed`` makes the sequence reproducible).

    Thread-safe (one shared ``random.Random``; across threads a seeded sequence interleaves).
    """

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def pick(self, instances: Sequence[Instance], key: str | None = None) -> Instance:
        """A random instance."""
        if not instances:
            raise NoInstanceAvailableError("no instance to pick from")
        return self._random.choice(instances)


#: Above this many (instances x cycle length) steps the weighted cycle is not precomputed.
_MAX_CYCLE_WORK = 250_000


def _smooth_cycle(weights: Sequence[int]) -> tuple[int, ...] | None:
    """nginx's smooth weighted round-robin, run for one full cycle: the index picked at each step."""
    divisor = reduce(math.gcd, weights)
    reduced = [w // divisor for w in weights]
    total = sum(reduced)
    if total * len(reduced) > _MAX_CYCLE_WORK:
        return None
    current = [0] * len(reduced)
    order: list[int] = []
    for _ in range(total):
        best = 0
        for index, weight in enumerate(reduced):
            current[index] += weight
            if current[index] > current[best]:
                best = index
        current[best] -= total
        order.append(best)
    return tuple(order)


class WeightedRoundRobin:
    """Smooth weighted round-robin (nginx): over every cycle each instance gets exactly its ``weight`` share,
    spread out rather than in bursts (weights 5,1,1 give a a b a c a a, not a a a a a b c).

    The cycle is computed once per instance set, so a pick is an index; for very large sets the classic
    per-pick algorithm runs under a lock instead.

    Thread-safe: the cycle is immutable; the large-set path runs under a lock.
    """

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._cycles: _PerTuple[tuple[int, ...] | None] = _PerTuple(lambda xs: _smooth_cycle([i.weight for i in xs]))
        self._lock = threading.Lock()
        self._current: dict[tuple[str, str, str], int] = {}

    def pick(self, instances: Sequence[Instance], key: str | None = None) -> Instance:
        """The next instance of the weighted cycle."""
        _require(instances)
        cycle = self._cycles.get(instances)
        if cycle is not None:
            return instances[cycle[next(self._counter) % len(cycle)]]
        return self._pick_classic(instances)

    def _pick_classic(self, instances: Sequence[Instance]) -> Instance:
        total = sum(i.weight for i in instances)
        with self._lock:
            best: Instance | None = None
            best_current = 0
            for instance in instances:
                current = self._current.get(instance.key, 0) + instance.weight
                self._current[instance.key] = current
                if best is None or current > best_current:
                    best, best_current = instance, current
            assert best is not None
            self._current[best.key] = best_current - total
            if len(self._current) > 2 * len(instances):
                alive = {i.key for i in instances}
                self._current = {k: v for k, v in self._current.items() if k in alive}
            return best


class PowerOfTwoChoices:
    """Power of two choices: draw two different instances at random, take the one with fewer requests in
    flight (ties go to the first drawn). Needs ``started``/``finished`` calls, which the httpx transports
    and :meth:`ServiceCache.track` make.

    Thread-safe: in-flight counts change under a lock; a pick reads them without one.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._outstanding: dict[tuple[str, str, str], int] = {}

    def outstanding(self, instance: Instance) -> int:
        """Requests to ``instance`` currently in flight."""
        return self._outstanding.get(instance.key, 0)

    def started(self, instance: Instance) -> None:
        """Count a request to ``instance`` as in flight."""
        with self._lock:
            self._outstanding[instance.key] = self._outstanding.get(instance.key, 0) + 1

    def finished(self, instance: Instance) -> None:
        """A request to ``instance`` is no longer in flight."""
        with self._lock:
            left = self._outstanding.get(instance.key, 0) - 1
            if left > 0:
                self._outstanding[instance.key] = left
            else:
                self._outstanding.pop(instance.key, None)

    def pick(self, instances: Sequence[Instance], key: str | None = None) -> Instance:
        """The less loaded of two random instances."""
        _require(instances)
        count = len(instances)
        if count == 1:
            return instances[0]
        first = self._random.randrange(count)
        second = self._random.randrange(count - 1)
        if second >= first:
            second += 1
        a, b = instances[first], instances[second]
        outstanding = self._outstanding
        return b if outstanding.get(b.key, 0) < outstanding.get(a.key, 0) else a


class ZoneAware:
    """Prefer instances in ``zone``; spill over to every zone when fewer than ``min_local`` local instances
    are pickable (failed ones are already removed by the cache). ``inner`` balances within the chosen set.

    Thread-safe when ``inner`` is (every shipped balancer is).
    """

    def __init__(self, zone: str | None, inner: Balancer | None = None, *, min_local: int = 1) -> None:
        if min_local < 1:
            raise ValidationError("min_local", f"must be at least 1, got {min_local}")
        self.zone = zone
        self.min_local = min_local
        self._inner: Balancer = inner if inner is not None else RoundRobin()
        self._tracking: RequestTracking | None = self._inner if isinstance(self._inner, RequestTracking) else None
        self._choice: _PerTuple[Sequence[Instance]] = _PerTuple(self._choose)

    def _choose(self, instances: Sequence[Instance]) -> Sequence[Instance]:
        local = tuple(i for i in instances if i.zone == self.zone)
        return local if len(local) >= self.min_local else instances

    def pick(self, instances: Sequence[Instance], key: str | None = None) -> Instance:
        """A local instance when enough are available, else any."""
        _require(instances)
        return self._inner.pick(self._choice.get(instances), key)

    def started(self, instance: Instance) -> None:
        """Forwarded to ``inner`` when it tracks requests."""
        if self._tracking is not None:
            self._tracking.started(instance)

    def finished(self, instance: Instance) -> None:
        """Forwarded to ``inner`` when it tracks requests."""
        if self._tracking is not None:
            self._tracking.finished(instance)


def _hash64(text: str) -> int:
    # A stable hash (Python's hash() differs per process), so every client maps a key to the same instance.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class _Ring:
    def __init__(self, instances: Sequence[Instance], replicas: int) -> None:
        points = sorted(
            (_hash64(f"{instance.namespace}/{instance.service}/{instance.id}#{n}"), index)
            for index, instance in enumerate(instances)
            for n in range(replicas * instance.weight)
        )
        self.hashes = [h for h, _ in points]
        self.owners = [instances[index] for _, index in points]


class ConsistentHash:
    """Consistent hashing of a ``key`` (a user id, a session id) onto a ring of instances: the same key goes
    to the same instance, and when an instance joins or leaves only about 1/N of the keys move.

    Each instance gets ``replicas x weight`` points on the ring (by id, so every client builds the same ring).
    A pick without a key raises :class:`discovery.ValidationError`.

    Thread-safe: a ring is immutable and rebuilt per instance set.
    """

    def __init__(self, replicas: int = 100) -> None:
        if replicas < 1:
            raise ValidationError("replicas", f"must be at least 1, got {replicas}")
        self.replicas = replicas
        self._rings: _PerTuple[_Ring] = _PerTuple(lambda xs: _Ring(xs, self.replicas))

    def pick(self, instances: Sequence[Instance], key: str | None = None) -> Instance:
        """The instance owning ``key`` on the ring."""
        if key is None:
            raise ValidationError("key", "ConsistentHash needs a key to pick by (e.g. a session id)")
        _require(instances)
        ring = self._rings.get(instances)
        position = bisect.bisect(ring.hashes, _hash64(key))
        return ring.owners[position % len(ring.owners)]
