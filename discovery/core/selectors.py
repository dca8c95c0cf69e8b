"""Kubernetes label selectors: ``app=web,tier!=db,env in (prod,stage),!legacy``.

Supported operators: ``=``, ``==``, ``!=``, ``in (…)``, ``notin (…)``, ``key`` (exists) and ``!key``
(does not exist), joined by commas (AND), with the same key and value syntax as labels.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from discovery.core.errors import SelectorError, ValidationError
from discovery.core.validation import validate_label_key, validate_label_value


class Operator(enum.Enum):
    """A requirement's operator."""

    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"


@dataclass(frozen=True, slots=True)
class Requirement:
    """One clause of a selector."""

    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies this clause (Kubernetes semantics: ``!=`` and ``notin`` match absent keys)."""
        present = self.key in labels
        match self.operator:
            case Operator.EXISTS:
                return present
            case Operator.DOES_NOT_EXIST:
                return not present
            case Operator.EQUALS | Operator.IN:
                return present and labels[self.key] in self.values
            case Operator.NOT_EQUALS | Operator.NOT_IN:
                return not present or labels[self.key] not in self.values
        raise AssertionError(self.operator)  # pragma: no cover

    def __str__(self) -> str:
        values = ",".join(sorted(self.values))
        match self.operator:
            case Operator.EXISTS:
                return self.key
            case Operator.DOES_NOT_EXIST:
                return f"!{self.key}"
            case Operator.EQUALS | Operator.NOT_EQUALS:
                return f"{self.key}{self.operator.value}{values}"
            case _:
                return f"{self.key} {self.operator.value} ({values})"


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed label selector: all requirements must hold. The empty selector matches everything.

    Immutable: safe to share between threads.
    """

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies every requirement."""
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)


_TOKEN = re.compile(
    r"\s*(?:(?P<set>(?P<skey>[^\s,!=()]+)\s+(?P<sop>in|notin)\s*\((?P<svals>[^()]*)\))"
    r"|(?P<not>!\s*(?P<nkey>[^\s,!=()]+))"
    r"|(?P<cmp>(?P<ckey>[^\s,!=()]+)\s*(?P<cop>==|!=|=)\s*(?P<cval>[^\s,!=()]*))"
    r"|(?P<exists>[^\s,!=()]+))\s*(?:,|$)"
)


def _key(text: str) -> str:
    try:
        return validate_label_key("selector", text)
    except ValidationError as bad:
        raise SelectorError(bad.reason) from None


def _value(text: str) -> str:
    try:
        return validate_label_value("selector", text)
    except ValidationError as bad:
        raise SelectorError(bad.reason) from None


def parse_selector(selector: str | Mapping[str, str] | Selector | None) -> Selector:
    """Parse a selector string (or an equality mapping) into a :class:`Selector`.

    Raises :class:`SelectorError` with the position of the first unparseable clause.
    """
    if selector is None:
        return Selector()
    if isinstance(selector, Selector):
        return selector
    if isinstance(selector, Mapping):
        return Selector(
            tuple(Requirement(_key(k), Operator.EQUALS, frozenset({_value(v)})) for k, v in selector.items())
        )
    if not isinstance(selector, str):
        raise SelectorError(f"expected a string or mapping, got {type(selector).__name__}")
    text = selector.strip()
    requirements: list[Requirement] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise SelectorError(f"cannot parse {text[position:]!r} (at character {position})")
        if match.group("set"):
            values = [v.strip() for v in match.group("svals").split(",")]
            if values == [""]:
                raise SelectorError(f"empty value set for {match.group('skey')!r}")
            operator = Operator.IN if match.group("sop") == "in" else Operator.NOT_IN
            requirements.append(
                Requirement(_key(match.group("skey")), operator, frozenset(_value(v) for v in values))
            )
        elif match.group("not"):
            requirements.append(Requirement(_key(match.group("nkey")), Operator.DOES_NOT_EXIST))
        elif match.group("cmp"):
            operator = Operator.NOT_EQUALS if match.group("cop") == "!=" else Operator.EQUALS
            requirements.append(
                Requirement(_key(match.group("ckey")), operator, frozenset({_value(match.group("cval"))}))
            )
        else:
            requirements.append(Requirement(_key(match.group("exists")), Operator.EXISTS))
        position = match.end()
        if text[match.end() - 1 : match.end()] == "," and position >= len(text):
            raise SelectorError("trailing ','")
    return Selector(tuple(requirements))
