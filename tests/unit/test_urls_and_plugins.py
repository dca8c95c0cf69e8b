"""URL parsing, secret redaction and backend lookup by entry point."""

from __future__ import annotations

import pytest

from discovery import ConfigurationError, UnknownBackendError, parse_url
from discovery.core.plugins import available_schemes, backend_class, create_backend
from discovery.memory import MemoryBackend


def test_multiple_endpoints_path_and_params() -> None:
    url = parse_url("zookeeper://h1:2181,h2:2182,[::1]:2183/root/x?session_timeout=10")
    assert [(e.host, e.port) for e in url.endpoints] == [("h1", 2181), ("h2", 2182), ("::1", 2183)]
    assert url.path == "/root/x"
    assert url.get_float("session_timeout", 1.0) == 10.0


def test_secrets_never_appear_in_str_or_repr() -> None:
    url = parse_url("consul://user:hunter2@h:8500?token=s3cr3t&dc=dc1")
    for text in (str(url), repr(url)):
        assert "hunter2" not in text and "s3cr3t" not in text
    assert url.password == "hunter2" and url.params["token"] == "s3cr3t"


@pytest.mark.parametrize("bad", ["", "nothing", "etcd://h:99999", "etcd://h:x", "etcd://h?a=1&a=2", "1x://h"])
def test_malformed_urls(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_url(bad)


def test_typed_parameter_errors() -> None:
    url = parse_url("memory://?ttl=abc")
    with pytest.raises(ConfigurationError, match="ttl"):
        url.get_float("ttl", 1.0)
    with pytest.raises(ConfigurationError, match="outside"):
        parse_url("memory://?ttl=-1").get_float("ttl", 1.0)
    with pytest.raises(ConfigurationError, match="boolean"):
        parse_url("memory://?tls=maybe").get_bool("tls", False)


def test_environment_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISCOVERY_URL", raising=False)
    assert parse_url(None).scheme == "memory"
    monkeypatch.setenv("DISCOVERY_URL", "etcd://127.0.0.1:2379")
    assert parse_url(None).scheme == "etcd"


def test_every_backend_is_found_by_entry_point() -> None:
    assert {"memory", "zookeeper", "etcd", "consul"} <= set(available_schemes())
    assert backend_class("memory") is MemoryBackend
    for scheme in ("zookeeper", "etcd", "consul"):
        assert backend_class(scheme).scheme == scheme


def test_unknown_scheme_and_parameter() -> None:
    with pytest.raises(UnknownBackendError, match="installed"):
        create_backend("nosuch://h")
    with pytest.raises(ConfigurationError, match="bogus"):
        create_backend("memory://?bogus=1")
