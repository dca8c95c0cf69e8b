"""Reading records other tools wrote: instance ids from their keys, labels from their tags and metadata.

Every backend shows registrations it did not write (a Go service using etcd's naming packages, Spring Cloud
Consul, ``consul services register``, Curator, a Finagle ServerSet) as read-only instances. What they call an
instance is often not a valid instance id (``10.0.0.1:8080``), and their tags and metadata are free-form, so
this module maps them onto the portable schema the same way on every backend
(docs/decisions/foreign-registrations.md):

* :func:`foreign_instance_id` / :func:`foreign_key_of`: a reversible id for any key segment or service id.
* :func:`labels_from_pairs` / :func:`tag_pair`: the pairs that are valid labels; the rest are dropped.
* :func:`log_skipped`: one DEBUG line per record that cannot be read, however often it is re-read.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable

from discovery.core import validation
from discovery.core.errors import ValidationError

#: The escape: ``_x`` followed by two lowercase hex digits is one escaped UTF-8 byte. ``_x`` rather than a bare
#: ``_``: ids like ``member_0000000042`` (ServerSets) or ``web_de`` are common and must stay as they are.
ESCAPE = "_x"
_ESCAPED_BYTE = re.compile(r"_x([0-9a-f]{2})")
_LITERAL = re.compile(r"[\w.-]")

#: How many distinct (key, reason) skip messages are remembered so that each is logged once.
_LOGGED_SKIPS = 4096


def _escape_needed(name: str) -> bool:
    try:
        validation.validate_instance_id(name)
    except ValidationError:
        return True
    return _ESCAPED_BYTE.search(name) is not None


def foreign_instance_id(name: str) -> str:
    """The instance id of a foreign key segment or service id, e.g. ``10.0.0.1:8080`` → ``10.0.0.1_x3a8080``.

    A name that is a valid id and holds no ``_x`` + two lowercase hex digits is its own id. Any other name is
    escaped: every character outside letters, digits, ``_``, ``.``, ``-`` (and a leading ``.`` or ``-``), and
    every ``_`` that is followed by ``x`` and two lowercase hex digits, becomes ``_xHH`` per UTF-8 byte. The
    mapping is one-to-one and :func:`foreign_key_of` inverts it. Raises ``ValidationError`` when the result
    would be empty or longer than 128 characters.
    """
    if not _escape_needed(name):
        return name
    out: list[str] = []
    for position, char in enumerate(name):
        literal = bool(_LITERAL.fullmatch(char)) and not (position == 0 and char in ".-")
        if char == "_" and _ESCAPED_BYTE.match(name, position):
            literal = False
        if literal:
            out.append(char)
        else:
            out.extend(f"{ESCAPE}{byte:02x}" for byte in char.encode())
    return validation.validate_instance_id("".join(out))


def foreign_key_of(instance_id: str) -> str:
    """The key segment or service id an id from :func:`foreign_instance_id` came from (its inverse)."""
    if _ESCAPED_BYTE.search(instance_id) is None:
        return instance_id
    raw = bytearray()
    position = 0
    for match in _ESCAPED_BYTE.finditer(instance_id):
        raw += instance_id[position : match.start()].encode()
        raw.append(int(match.group(1), 16))
        position = match.end()
    raw += instance_id[position:].encode()
    return raw.decode(errors="surrogateescape")


def tag_pair(tag: str) -> tuple[str, str]:
    """A tag as a label pair: ``key=value`` → ``(key, value)``, a bare ``tag`` → ``(tag, "")``."""
    key, equals, value = tag.partition("=")
    return (key, value) if equals else (tag, "")


def labels_from_pairs(pairs: Iterable[tuple[object, object]], logger: logging.Logger, source: str) -> dict[str, str]:
    """The pairs that are valid labels (later pairs win), at most 48; the rest are dropped with a DEBUG line."""
    labels: dict[str, str] = {}
    for key, value in pairs:
        try:
            checked = validation.validate_labels({key: value})
        except ValidationError:
            log_skipped(logger, f"{source} label {str(key)[:64]!r}", "not a valid label")
            continue
        if key not in labels and len(labels) >= validation.MAX_LABELS:
            log_skipped(logger, f"{source} label {str(key)[:64]!r}", f"more than {validation.MAX_LABELS} labels")
            continue
        labels.update(checked)
    return labels


@functools.lru_cache(maxsize=_LOGGED_SKIPS)
def log_skipped(logger: logging.Logger, key: str, reason: str) -> None:
    """Log at DEBUG that ``key`` was skipped for ``reason`` - once while the pair is remembered (4096 pairs)."""
    logger.debug("skipping %s: %s", key, reason)
