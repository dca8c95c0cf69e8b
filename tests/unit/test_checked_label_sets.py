"""Label and named-port sets are checked once per distinct set and shared, with the same answers as checking each."""

from __future__ import annotations

import pytest

from discovery import Instance, Status, ValidationError


class _Text(str):
    """A ``str`` subclass: never answered from the cache (it could compare equal to a cached key and differ)."""


def test_instances_with_the_same_labels_share_one_frozen_mapping() -> None:
    first = Instance("api", "a", "127.0.0.1", 80, labels={"zone": "a", "tier": "web"}, ports={"admin": 81})
    second = Instance("api", "b", "127.0.0.1", 80, labels={"tier": "web", "zone": "a"}, ports={"admin": 81})
    assert first.labels == second.labels == {"tier": "web", "zone": "a"}
    assert list(first.labels) == ["tier", "zone"]  # frozen sorted, whatever the order given
    third = Instance("api", "c", "127.0.0.1", 80, labels=dict(first.labels), ports=dict(first.ports))
    assert third.labels is first.labels and third.ports is first.ports
    assert first.with_changes(weight=2).labels is first.labels
    assert Instance("api", "d", "127.0.0.1", 80).labels is Instance("api", "e", "127.0.0.1", 80).labels


@pytest.mark.parametrize(
    "labels",
    [
        {"bad key!": "x"},
        {"zone": "not ok!"},
        {"zone": 7},
        {f"k{n}": "v" for n in range(49)},
        {_Text("zone"): "has space "},
        ["zone", "a"],
    ],
)
def test_a_bad_label_set_is_refused_every_time(labels: object) -> None:
    for _ in range(2):  # a refusal is not remembered as an answer
        with pytest.raises(ValidationError):
            Instance("api", "a", "127.0.0.1", 80, labels=labels)  # type: ignore[arg-type]


@pytest.mark.parametrize("ports", [{"admin": True}, {"admin": 70000}, {"Admin": 81}, {"admin": "81"}])
def test_a_bad_named_port_set_is_refused_every_time(ports: object) -> None:
    for _ in range(2):
        with pytest.raises(ValidationError):
            Instance("api", "a", "127.0.0.1", 80, ports=ports)  # type: ignore[arg-type]


def test_a_str_subclass_label_is_checked_as_before() -> None:
    instance = Instance("api", "a", "127.0.0.1", 80, labels={_Text("zone"): _Text("a")})
    assert instance.labels == {"zone": "a"}


def test_a_status_given_as_text_becomes_a_status_and_a_bad_one_is_refused() -> None:
    assert Instance("api", "a", "127.0.0.1", 80, status="DOWN").status is Status.DOWN  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="status"):
        Instance("api", "a", "127.0.0.1", 80, status="SLEEPING")  # type: ignore[arg-type]
