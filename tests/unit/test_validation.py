"""The portable schema: what an Instance accepts and refuses."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from discovery import Instance, Status, ValidationError
from discovery.testing.conformance import maximal_instance


def test_defaults() -> None:
    instance = Instance("web", "web-1", "10.0.0.1", 80)
    assert (instance.namespace, instance.status, instance.weight, instance.zone) == ("default", Status.UP, 1, None)
    assert instance.key == ("default", "web", "web-1")


def test_maximal_instance_is_valid_and_immutable() -> None:
    instance = maximal_instance("svc")
    assert len(instance.labels) == 48 and len(instance.ports) == 16 and len(instance.id) == 128
    with pytest.raises(AttributeError):
        instance.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        instance.labels["x"] = "y"  # type: ignore[index]


def test_instances_compare_by_value_and_hash() -> None:
    a = Instance("web", "1", "::1", 80, labels={"b": "2", "a": "1"})
    b = Instance("web", "1", "::1", 80, labels={"a": "1", "b": "2"})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("service", "UPPER"), ("service", "a_b"), ("service", "a" * 64), ("namespace", "a/b"),
        ("id", "../x"), ("id", "a b"), ("id", "é/"), ("address", "-bad-"), ("address", "a" * 64 + ".com"),
        ("port", -1), ("port", 80.0), ("labels", {"k": "v" * 64}), ("labels", {"x" * 64: "v"}),
        ("labels", {"UPPER.example/x": "v"}), ("ports", {"a" * 16: 1}), ("status", "up"), ("weight", True),
        ("zone", "a b"),
    ],
)
def test_field_errors_name_the_field(field: str, value: Any) -> None:
    fields: dict[str, Any] = {"service": "web", "id": "web-1", "address": "127.0.0.1", "port": 80, field: value}
    with pytest.raises(ValidationError) as raised:
        Instance(**fields)
    assert raised.value.field == field
    assert field in str(raised.value)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "fe80::1", "example.com", "a-b.c.", "localhost"])
def test_addresses_accepted(address: str) -> None:
    assert Instance("web", "x", address, 1).address == address


def test_unicode_ids_are_accepted() -> None:
    assert Instance("web", "서비스-1.日本_x", "127.0.0.1", 1).id == "서비스-1.日本_x"


def test_with_changes_revalidates() -> None:
    instance = Instance("web", "x", "127.0.0.1", 1)
    assert instance.with_changes(status="DRAINING").status is Status.DRAINING
    with pytest.raises(ValidationError):
        instance.with_changes(port=0)


def test_checked_returns_the_same_instance_unless_a_field_was_forged() -> None:
    instance = Instance("web", "w1", "10.0.0.1", 80, labels={"app": "web"})
    assert instance.checked() is instance  # validated at construction: no second parse on the write path
    duplicate = copy.copy(instance)
    assert duplicate.checked() is duplicate  # the same objects in every field: still the validated values
    forged = Instance("web", "w2", "10.0.0.1", 80)
    object.__setattr__(forged, "port", 70000)  # frozen, but not proof against object.__setattr__
    with pytest.raises(ValidationError, match="port"):
        forged.checked()
    built = object.__new__(Instance)  # never went through __init__ at all
    for name, value in {"service": "web", "id": "w3", "address": "not an address", "port": 80,
                        "namespace": "default", "labels": {}, "ports": {}, "status": "UP", "weight": 1,
                        "zone": None}.items():
        object.__setattr__(built, name, value)
    with pytest.raises(ValidationError, match="address"):
        built.checked()
