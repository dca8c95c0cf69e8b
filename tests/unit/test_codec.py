"""The canonical JSON form that every adapter embeds."""

from __future__ import annotations

import json

import pytest

from discovery import Instance, Status, ValidationError
from discovery.core.codec import decode_instance, encode_instance, instance_from_dict, instance_to_dict
from discovery.testing.conformance import maximal_instance


def test_lossless_round_trip_of_the_maximal_instance() -> None:
    for status in Status:
        instance = maximal_instance("svc", status)
        assert decode_instance(encode_instance(instance)) == instance


def test_unknown_keys_are_tolerated_and_defaults_fill_gaps() -> None:
    data = {"service": "web", "id": "1", "address": "::1", "port": 80, "from_the_future": {"x": 1}}
    assert instance_from_dict(data) == Instance("web", "1", "::1", 80)


def test_non_ascii_is_kept_as_utf8() -> None:
    raw = encode_instance(Instance("web", "日本", "::1", 80))
    assert "日本".encode() in raw and json.loads(raw)["id"] == "日本"


@pytest.mark.parametrize(
    ("raw", "field"),
    [(b"not json", "instance"), (b"[]", "instance"), (b'{"id":"1","address":"::1","port":1}', "service"),
     (b'{"service":"w","id":"1","address":"::1","port":1,"status":"NOPE"}', "status")],
)
def test_garbage_raises_validation_error(raw: bytes, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        decode_instance(raw)
    assert raised.value.field == field


def test_stable_key_set() -> None:
    assert set(instance_to_dict(Instance("web", "1", "::1", 80))) == {
        "schema", "namespace", "service", "id", "address", "port", "labels", "ports", "status", "weight", "zone"
    }
