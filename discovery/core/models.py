"""The data model: ``Instance`` (one registered endpoint), ``Snapshot`` (a service's current set), ``Status``."""

from __future__ import annotations

import bisect
import enum
import functools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from discovery.core import validation
from discovery.core.errors import ValidationError

DEFAULT_NAMESPACE = "default"


class Status(enum.StrEnum):
    """The life-cycle status of an instance. Only ``UP`` instances are picked by default."""

    STARTING = "STARTING"
    UP = "UP"
    DRAINING = "DRAINING"
    DOWN = "DOWN"


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(sorted(mapping.items())))


# Labels and named ports, checked and frozen once per distinct set: the records of a fleet repeat a few label sets
# (and most have no named ports), and checking every record's again was a third of decoding one (an initial sync
# decodes every instance it watches). Cached only for plain dicts or frozen mappings whose keys and values are exactly
# ``str`` (``int`` for ports), so what the cache answers is what checking them would return. A frozen mapping is
# read-only: instances share it.
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_MAPPING_TYPES = (dict, MappingProxyType)


@functools.lru_cache(maxsize=1024)
def _checked_labels(items: tuple[tuple[str, str], ...]) -> Mapping[str, str]:
    return _frozen(validation.validate_labels(dict(items)))


@functools.lru_cache(maxsize=256)
def _checked_ports(items: tuple[tuple[str, int], ...]) -> Mapping[str, int]:
    return _frozen(validation.validate_named_ports(dict(items)))


def _frozen_set(
    value: object,
    value_type: type,
    checked: Callable[[Any], Mapping[str, Any]],
    check: Callable[[object], Mapping[str, Any]],
) -> Mapping[str, Any]:
    """``value`` checked and frozen: from the cache when it is a plain or frozen mapping of exactly ``str`` keys and
    ``value_type`` values (sorted, so one entry per set whatever the order given), else by ``check``."""
    if type(value) in _MAPPING_TYPES:
        if not value:
            return _EMPTY
        items = value.items()  # type: ignore[attr-defined]  # a dict or a frozen mapping
        if all(type(key) is str and type(item) is value_type for key, item in items):
            return checked(tuple(sorted(items)))
    return _frozen(check(value))


@dataclass(frozen=True, slots=True)
class Instance:
    """One registered endpoint of a service. Construction validates every field.

    Raises :class:`discovery.ValidationError` naming the field when any value is malformed.

    Immutable: safe to share between threads.
    """

    service: str
    id: str
    address: str
    port: int
    namespace: str = DEFAULT_NAMESPACE
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    status: Status = Status.UP
    weight: int = 1
    zone: str | None = None
    # The field values as validated (the objects themselves): see :meth:`checked`.
    _validated: tuple[object, ...] | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        validation.validate_service_name(self.service)
        validation.validate_instance_id(self.id)
        validation.validate_address(self.address)
        validation.validate_port("port", self.port)
        validation.validate_namespace(self.namespace)
        object.__setattr__(self, "labels", _frozen_set(self.labels, str, _checked_labels, validation.validate_labels))
        object.__setattr__(self, "ports", _frozen_set(self.ports, int, _checked_ports, validation.validate_named_ports))
        if type(self.status) is not Status:
            try:
                object.__setattr__(self, "status", Status(self.status))
            except ValueError:
                raise ValidationError(
                    "status", f"{self.status!r} is not one of {', '.join(s.value for s in Status)}"
                ) from None
        validation.validate_weight(self.weight)
        validation.validate_zone(self.zone)
        object.__setattr__(self, "_validated", self._values())

    def _values(self) -> tuple[object, ...]:
        return (self.service, self.id, self.address, self.port, self.namespace, self.labels, self.ports,
                self.status, self.weight, self.zone)

    def checked(self) -> Instance:
        """This instance if every field is still the very object validated at construction, else a validated
        copy (:class:`ValidationError` if a value is bad).

        ``Instance`` is frozen, but ``object.__setattr__`` or ``object.__new__`` can still forge one; a write
        path calls this instead of validating every field again (an identity check per field, not a parse).
        """
        validated = getattr(self, "_validated", None)  # unset on an object made without __init__
        if validated is not None and all(a is b for a, b in zip(validated, self._values(), strict=True)):
            return self
        return replace(self)

    def __hash__(self) -> int:
        return hash((self.namespace, self.service, self.id, self.address, self.port, self.status))

    @property
    def key(self) -> tuple[str, str, str]:
        """``(namespace, service, id)``: what identifies the instance within a registry."""
        return (self.namespace, self.service, self.id)

    def with_changes(self, **changes: Any) -> Instance:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)

    def port_named(self, name: str) -> int | None:
        """The named port ``name`` (``None`` if the instance has none by that name)."""
        return self.ports.get(name)


_BY_ID = operator.attrgetter("id")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The full set of instances of one service at one moment.

    ``revision`` increases with every snapshot a watch delivers. ``stale`` is set while the backend is
    unreachable: the last good set is kept rather than emptied.

    Immutable: safe to share between threads.
    """

    service: str
    namespace: str
    instances: tuple[Instance, ...]
    revision: int = 0
    stale: bool = False

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.instances, key=_BY_ID))
        object.__setattr__(self, "instances", ordered)

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances)

    def __len__(self) -> int:
        return len(self.instances)

    def ids(self) -> frozenset[str]:
        """The instance ids in this snapshot."""
        return frozenset(i.id for i in self.instances)

    def get(self, instance_id: str) -> Instance | None:
        """The instance with this id, if present (a binary search: the instances are sorted by id)."""
        position = bisect.bisect_left(self.instances, instance_id, key=_BY_ID)
        if position < len(self.instances) and self.instances[position].id == instance_id:
            return self.instances[position]
        return None

    def same_members(self, other: Snapshot | Iterable[Instance]) -> bool:
        """True when both hold exactly the same instances (all fields), ignoring revision and staleness."""
        theirs = other.instances if isinstance(other, Snapshot) else tuple(sorted(other, key=_BY_ID))
        return self.instances == theirs

    def with_revision(self, revision: int, *, stale: bool | None = None) -> Snapshot:
        """A copy with another revision (and optionally another ``stale`` flag)."""
        # Not dataclasses.replace: that re-runs __post_init__, re-sorting instances that are already sorted,
        # and watch fan-out re-stamps every snapshot a backend delivers.
        copy = object.__new__(Snapshot)
        for name, value in (("service", self.service), ("namespace", self.namespace), ("instances", self.instances),
                            ("revision", revision), ("stale", self.stale if stale is None else stale)):
            object.__setattr__(copy, name, value)
        return copy
