"""Foreign ids and labels (discovery.core.foreign): reversible, always valid, identity where possible."""

from __future__ import annotations

import logging
import random

import pytest

from discovery.core import validation
from discovery.core.errors import ValidationError
from discovery.core.foreign import foreign_instance_id, foreign_key_of, labels_from_pairs, tag_pair


@pytest.mark.parametrize(
    "name", ["orders-8080", "node_7", "a.b-c", "ünï-1", "_x", "host_AB", "member_0000000042", "web_de", "a_x3"]
)
def test_valid_ids_without_escape_sequences_are_kept(name: str) -> None:
    assert foreign_instance_id(name) == name


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("10.0.0.1:8080", "10.0.0.1_x3a8080"),
        ("[::1]:443", "_x5b_x3a_x3a1_x5d_x3a443"),
        ("v1/host", "v1_x2fhost"),
        (".hidden", "_x2ehidden"),
        ("-x", "_x2dx"),
        ("a b", "a_x20b"),
        ("web_x3a", "web_x5fx3a"),  # a valid id that looks escaped is escaped itself
        ("_:", "__x3a"),
        ("_x:", "_x_x3a"),
        ("é:1", "é_x3a1"),
        ("€ 1", "_xe2_x82_xac_x201"),  # "€" is not a letter: its three UTF-8 bytes
    ],
)
def test_other_names_are_escaped_and_reversible(name: str, escaped: str) -> None:
    assert foreign_instance_id(name) == escaped
    assert foreign_key_of(escaped) == name
    validation.validate_instance_id(escaped)


def test_random_names_round_trip_to_distinct_valid_ids() -> None:
    rng = random.Random(16)
    alphabet = "ab_x0f9:/.-@ é[]"
    seen: dict[str, str] = {}
    for _ in range(5000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        instance_id = foreign_instance_id(name)
        validation.validate_instance_id(instance_id)
        assert foreign_key_of(instance_id) == name
        assert seen.setdefault(instance_id, name) == name  # one-to-one


def test_too_long_or_empty_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        foreign_instance_id(":" * 40)  # 160 characters escaped
    with pytest.raises(ValidationError):
        foreign_instance_id("")


def test_tags_and_metadata_become_labels_where_valid() -> None:
    assert tag_pair("zone=eu-1") == ("zone", "eu-1")
    assert tag_pair("secure") == ("secure", "")
    assert tag_pair("a=b=c") == ("a", "b=c")
    pairs = [tag_pair("secure"), tag_pair("v=1"), ("bad key", "x"), ("k", "bad value!"), ("v", "2"), (3, "x")]
    assert labels_from_pairs(pairs, logging.getLogger("test"), "test") == {"secure": "", "v": "2"}
    many = [(f"k{n}", "v") for n in range(60)]
    assert len(labels_from_pairs(many, logging.getLogger("test"), "test")) == validation.MAX_LABELS
