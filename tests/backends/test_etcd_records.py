"""etcd records without a server: the endpoint JSON (golden bytes), the key layout and the URL settings."""

from __future__ import annotations

import logging

import pytest

from discovery.core.errors import ConfigurationError
from discovery.core.foreign import foreign_key_of
from discovery.core.models import Instance, Status
from discovery.core.plugins import create_backend
from discovery.core.urls import parse_url
from discovery_etcd import EtcdBackend
from discovery_etcd.keepalive import lease_ttl
from discovery_etcd.layout import KeyLayout, normalize_prefix
from discovery_etcd.records import decode_endpoint, encode_endpoint, go_json
from discovery_etcd.settings import EtcdSettings

GOLDEN_INSTANCE = Instance(
    "api",
    "api-1",
    "192.0.2.10",
    8080,
    labels={"version": "v2", "tier": "web"},
    ports={"grpc": 9090},
    status=Status.DRAINING,
    weight=5,
    zone="z1",
)
# What etcd's client/v3/naming/endpoints AddEndpoint writes for Endpoint{Addr, Metadata: <canonical map>}:
# Go's json.Marshal of internal.Update{Op, Addr, Metadata} - struct order outside, sorted map keys inside.
GOLDEN_VALUE = (
    b'{"Op":0,"Addr":"192.0.2.10:8080","Metadata":{"address":"192.0.2.10","id":"api-1",'
    b'"labels":{"tier":"web","version":"v2"},"namespace":"default","port":8080,"ports":{"grpc":9090},'
    b'"schema":1,"service":"api","status":"DRAINING","weight":5,"zone":"z1"}}'
)


def test_value_bytes_are_the_golden_endpoint_json() -> None:
    assert encode_endpoint(GOLDEN_INSTANCE) == GOLDEN_VALUE


def test_value_round_trips() -> None:
    assert decode_endpoint(GOLDEN_VALUE, "default", "api", "api-1") == GOLDEN_INSTANCE


def test_non_ascii_is_written_raw_and_ipv6_addresses_are_bracketed() -> None:
    instance = Instance("api", "ünï-1", "::1", 443, zone=None)
    value = encode_endpoint(instance)
    assert value.startswith(b'{"Op":0,"Addr":"[::1]:443","Metadata":{')
    assert "ünï-1".encode() in value and b"\\u" not in value
    assert decode_endpoint(value, "default", "api", "ünï-1") == instance


def test_go_escapes_html_characters_like_encoding_json() -> None:
    assert go_json({"b": "<a&b>", "a": "\u2028"}) == '{"a":"\\u2028","b":"\\u003ca\\u0026b\\u003e"}'


def test_plain_endpoint_from_another_etcd_client_is_read_from_key_and_addr() -> None:
    foreign = b'{"Op":0,"Addr":"192.0.2.7:50051","Metadata":null}'
    assert decode_endpoint(foreign, "default", "api", "node-7") == Instance("api", "node-7", "192.0.2.7", 50051)


def test_go_naming_key_host_port_becomes_an_escaped_reversible_id() -> None:
    # etcd's documentation: em.AddEndpoint(ctx, target+"/"+addr, endpoints.Endpoint{Addr: addr}).
    foreign = b'{"Op":0,"Addr":"10.0.0.1:8080","Metadata":null}'
    instance = decode_endpoint(foreign, "default", "api", "10.0.0.1:8080")
    assert instance == Instance("api", "10.0.0.1_x3a8080", "10.0.0.1", 8080)
    assert foreign_key_of(instance.id) == "10.0.0.1:8080"
    ipv6 = decode_endpoint(b'{"Op":0,"Addr":"[::1]:443","Metadata":{"zone":"z"}}', "default", "api", "[::1]:443")
    assert ipv6 is not None and (ipv6.address, ipv6.port) == ("::1", 443)
    assert foreign_key_of(ipv6.id) == "[::1]:443"
    deeper = decode_endpoint(foreign, "default", "api", "v1/host-1")
    assert deeper is not None and foreign_key_of(deeper.id) == "v1/host-1"


def test_an_undecodable_key_is_logged_once_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="discovery.backends.etcd.records")
    raw = b'{"Op":0,"Addr":"no-port-here"}'
    for _ in range(3):
        assert decode_endpoint(raw, "default", "api", "logged-once") is None
    lines = [r for r in caplog.records if "logged-once" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG
    assert "Addr is not host:port" in lines[0].getMessage()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"Op":1,"Addr":"192.0.2.7:1"}',
        b'{"Op":0,"Addr":"no-port"}',
        b'{"Op":0,"Addr":"h:0"}',
        b'{"Op":0,"Addr":"h:1","Metadata":{"schema":1,"service":"api"}}',
    ],
)
def test_undecodable_values_are_skipped(raw: bytes) -> None:
    assert decode_endpoint(raw, "default", "api", "x") is None


def test_identity_must_match_the_key() -> None:
    assert decode_endpoint(GOLDEN_VALUE, "default", "api-v2", "api-1") is None
    assert decode_endpoint(GOLDEN_VALUE, "other", "api", "api-1") is None
    assert decode_endpoint(GOLDEN_VALUE, "default", "api", "api-2") is None


def test_key_layout_uses_trailing_slashes() -> None:
    layout = KeyLayout("/discovery")
    assert layout.instance_key("default", "api", "a-1") == b"/discovery/default/api/a-1"
    assert layout.target("default", "api") == "/discovery/default/api"
    assert layout.service_prefix("default", "api") == b"/discovery/default/api/"
    assert not layout.instance_key("default", "api-v2", "x").startswith(layout.service_prefix("default", "api"))
    assert layout.namespace_prefix("a") == b"/discovery/a/"
    assert layout.parse(b"/discovery/default/api/a-1") == ("default", "api", "a-1")
    # Another etcd naming client may write anything after <target>/: all of it is the key segment.
    assert layout.parse(b"/discovery/default/api/10.0.0.1:8080") == ("default", "api", "10.0.0.1:8080")
    assert layout.parse(b"/discovery/default/api/v1/a") == ("default", "api", "v1/a")
    for bad in (b"/discovery/default/api", b"/discovery/default/api/", b"/other/default/api/a", b"/discovery//x/y"):
        assert layout.parse(bad) is None


@pytest.mark.parametrize(("path", "prefix"), [("", "/discovery"), ("/", "/discovery"), ("/a/b/", "/a/b")])
def test_prefix_from_url_path(path: str, prefix: str) -> None:
    assert normalize_prefix(path) == prefix


def test_url_settings_and_errors() -> None:
    settings = EtcdSettings.from_url(parse_url("etcd://h1:1,h2/svc?ttl=3&timeout=2"))
    assert [str(e) for e in settings.endpoints] == ["h1:1", "h2:2379"]
    assert (settings.prefix, settings.ttl, settings.timeout) == ("/svc", 3.0, 2.0)
    assert EtcdSettings.from_url(parse_url("etcd://")).endpoints[0].port == 2379
    for bad in ("etcd://h?nope=1", "etcd://h?ttl=1", "etcd://h?ttl=x", "etcd://h//a//b", "etcd://user@h"):
        with pytest.raises(ConfigurationError):
            EtcdSettings.from_url(parse_url(bad))


def test_entry_point_builds_the_backend_with_whole_second_ttls() -> None:
    backend = create_backend("etcd://127.0.0.1:1/x?ttl=2.5")
    assert isinstance(backend, EtcdBackend)
    assert backend.capabilities.default_ttl == 3.0
    assert backend.effective_ttl(None) == 3.0
    assert backend.effective_ttl(0.5) == 2.0
    assert backend.effective_ttl(4.2) == 5.0
    assert backend.detection_bound(2.0) == 3.0
    assert lease_ttl(2.0) == 2
