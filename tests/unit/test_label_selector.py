"""Kubernetes label-selector parsing and matching."""

from __future__ import annotations

import pytest

from discovery import SelectorError, parse_selector

LABELS = {"app": "web", "tier": "front", "env": "prod", "app.kubernetes.io/name": "shop"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app=api", False),
        ("app!=api", True),
        ("missing!=x", True),
        ("env in (prod,stage)", True),
        ("env in (stage)", False),
        ("env notin (prod)", False),
        ("missing notin (a)", True),
        ("tier", True),
        ("missing", False),
        ("!missing", True),
        ("!tier", False),
        ("app=web, tier=front ,env in ( prod , dev )", True),
        ("app.kubernetes.io/name=shop", True),
        ("app=", False),
    ],
)
def test_kubernetes_semantics(selector: str, matches: bool) -> None:
    assert parse_selector(selector).matches(LABELS) is matches


def test_empty_value_matches_empty_label() -> None:
    assert parse_selector("flag=").matches({"flag": ""})


@pytest.mark.parametrize(
    "selector",
    ["app=web,", ",app", "a in ()", "a in b", "a=b=c", "bad key=1", "a=b c", "a in (b", "a=has space", "-a=b", "a=-b"],
)
def test_malformed_selectors_raise_selector_error(selector: str) -> None:
    with pytest.raises(SelectorError) as raised:
        parse_selector(selector)
    assert raised.value.field == "selector"


def test_mapping_selector_is_equality() -> None:
    selector = parse_selector({"app": "web", "tier": "front"})
    assert selector.matches(LABELS)
    assert not selector.matches({"app": "web"})


def test_round_trip_through_str() -> None:
    text = "app=web,tier!=db,env in (prod,stage),x notin (a),y,!z"
    assert str(parse_selector(str(parse_selector(text)))) == str(parse_selector(text))
