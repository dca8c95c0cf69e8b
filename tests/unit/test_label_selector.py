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


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("tier web", "expected an operator (=, ==, !=, in, notin), ',' or the end after 'tier' at character 5, "
                     "found 'web'"),
        ("app=web,", "expected a requirement after ',' at character 8, found the end"),
        (",app", "expected a label key at character 0, found ','"),
        ("env in prod", "expected '(' after 'env in' at character 7, found 'prod'"),
        ("env in ()", "expected a value after 'env in (' at character 8, found ')'"),
        ("env in (a b)", "expected ',' or ')' after 'a' at character 10, found 'b'"),
        ("env in (a", "expected ',' or ')' after 'a' at character 9, found the end"),
        ("a=b=c", "expected ',' or the end after 'a=b' at character 3, found '='"),
        ("!", "expected a label key after '!' at character 1, found the end"),
        ("a=-b", "label value '-b' must be alphanumeric at both ends with '-', '_', '.' between (at character 2)"),
    ],
)
def test_errors_say_what_was_expected_where(selector: str, message: str) -> None:
    with pytest.raises(SelectorError) as raised:
        parse_selector(selector)
    assert str(raised.value) == f"selector: {message}"


def test_an_error_quotes_a_bounded_part_of_a_huge_selector() -> None:
    with pytest.raises(SelectorError) as raised:
        parse_selector("a=b " + "x" * 100_000)
    assert len(str(raised.value)) < 200
