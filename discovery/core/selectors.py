"""Kubernetes label selectors: ``app=web,tier!=db,env in (prod,stage),!legacy``.

Supported operators: ``=``, ``==``, ``!=``, ``in (…)``, ``notin (…)``, ``key`` (exists) and ``!key``
(does not exist), joined by commas (AND), with the same key and value syntax as labels.
"""

from __future__ import annotations

import enum
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


#: Characters that end a key or value (Kubernetes' selector lexer treats the same ones as separators).
_SEPARATORS = frozenset(" \t\n\r\f\v,!=()")
_OPERATORS = "an operator (=, ==, !=, in, notin)"
#: How much of an unexpected token an error quotes.
_QUOTED = 40


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    start: int

    @property
    def is_word(self) -> bool:
        return self.text[0] not in _SEPARATORS


def _tokens(text: str) -> list[_Token]:
    """Words (keys, values, ``in``, ``notin``) and the punctuation ``, ! = == != ( )``, with their offsets."""
    found: list[_Token] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
        elif char in "=!" and text.startswith("=", position + 1):
            found.append(_Token(text[position : position + 2], position))
            position += 2
        elif char in _SEPARATORS:
            found.append(_Token(char, position))
            position += 1
        else:
            end = position
            while end < len(text) and text[end] not in _SEPARATORS:
                end += 1
            found.append(_Token(text[position:end], position))
            position = end
    return found


class _Parser:
    """A recursive-descent parser over :func:`_tokens`; every error says what was expected, after what, where."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.index = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> _Token | None:
        token = self.peek()
        self.index += token is not None
        return token

    def fail(self, expected: str, after: str | None = None) -> SelectorError:
        token = self.peek()
        where = f" after {after[:_QUOTED]!r}" if after else ""
        if token is None:
            return SelectorError(f"expected {expected}{where} at character {len(self.text)}, found the end")
        return SelectorError(f"expected {expected}{where} at character {token.start}, found {token.text[:_QUOTED]!r}")

    def key(self, token: _Token) -> str:
        try:
            return validate_label_key("selector", token.text)
        except ValidationError as bad:
            raise SelectorError(f"{bad.reason} (at character {token.start})") from None

    def value(self, token: _Token) -> str:
        try:
            return validate_label_value("selector", token.text)
        except ValidationError as bad:
            raise SelectorError(f"{bad.reason} (at character {token.start})") from None

    def parse(self) -> Selector:
        requirements: list[Requirement] = []
        while True:
            requirements.append(self.requirement())
            token = self.take()
            if token is None:
                return Selector(tuple(requirements))
            if token.text != ",":  # pragma: no cover - requirement() only returns before ',' or the end
                raise AssertionError(token)

    def requirement(self) -> Requirement:
        token = self.peek()
        if token is not None and token.text == "!":
            self.take()
            key_token = self.peek()
            if key_token is None or not key_token.is_word:
                raise self.fail("a label key", after="!")
            self.take()
            return self.end_of(Requirement(self.key(key_token), Operator.DOES_NOT_EXIST), key_token.text)
        if token is None or not token.is_word:
            after = "," if self.index else None
            raise self.fail("a label key" if after is None else "a requirement", after=after)
        self.take()
        key = self.key(token)
        operator = self.peek()
        if operator is None or operator.text == ",":
            return Requirement(key, Operator.EXISTS)
        if operator.text in ("=", "==", "!="):
            self.take()
            value_token = self.peek()
            if value_token is None or value_token.text == ",":
                value = ""  # Kubernetes: "key=" selects the empty value
            elif value_token.is_word:
                self.take()
                value = self.value(value_token)
            else:
                raise self.fail("a value", after=f"{token.text}{operator.text}")
            kind = Operator.NOT_EQUALS if operator.text == "!=" else Operator.EQUALS
            return self.end_of(Requirement(key, kind, frozenset({value})), f"{token.text}{operator.text}{value}")
        if operator.text in ("in", "notin"):
            self.take()
            values = self.value_set(f"{token.text} {operator.text}")
            kind = Operator.IN if operator.text == "in" else Operator.NOT_IN
            return self.end_of(Requirement(key, kind, values), f"{token.text} {operator.text} (...)")
        raise self.fail(f"{_OPERATORS}, ',' or the end", after=token.text)

    def value_set(self, after: str) -> frozenset[str]:
        opening = self.peek()
        if opening is None or opening.text != "(":
            raise self.fail("'('", after=after)
        self.take()
        values: list[str] = []
        while True:
            token = self.peek()
            if token is None or not token.is_word:
                raise self.fail("a value", after=f"{after} (" if not values else ",")
            self.take()
            values.append(self.value(token))
            closing = self.take()
            if closing is not None and closing.text == ")":
                return frozenset(values)
            if closing is None or closing.text != ",":
                self.index -= closing is not None
                raise self.fail("',' or ')'", after=token.text)

    def end_of(self, requirement: Requirement, after: str) -> Requirement:
        token = self.peek()
        if token is not None and token.text != ",":
            raise self.fail("',' or the end", after=after)
        return requirement


def parse_selector(selector: str | Mapping[str, str] | Selector | None) -> Selector:
    """Parse a selector string (or an equality mapping) into a :class:`Selector`.

    Raises :class:`SelectorError` saying what was expected, after what and at which character, e.g.
    ``expected an operator (=, ==, !=, in, notin), ',' or the end after 'tier' at character 5, found 'web'``.
    Parsing is one pass over the text (linear time); an error quotes at most 40 characters of it.
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
    if not selector.strip():
        return Selector()
    return _Parser(selector).parse()


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
