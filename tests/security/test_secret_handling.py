"""Finding 14 (secrets): ``password_file``/``token_file`` permissions were not checked; no warning said that a
password or token was about to travel without TLS; a ``/`` (or ``?``, ``#``) in an unescaped password was parsed
as ``host:port`` (``etcd://root:1234/x@db:2379`` connected to host ``root``, port 1234, and showed the rest of the
password as the path).

The settings of every backend are built exactly as ``connect()`` builds them (``create_backend``), without a
server: the warnings are about what would be sent, before anything is.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import pytest

from discovery.core.errors import ConfigurationError
from discovery.core.plugins import create_backend
from discovery.core.urls import parse_url, redact_url

SECRET = "Pa55-Canary-7c1d"


def a_remote_host() -> str:
    """A non-loopback address nobody is contacted at (settings only); unique, since warnings come once each."""
    number = uuid.uuid4().int
    return f"10.{number % 250 + 1}.{number // 250 % 250 + 1}.{number // 62500 % 250 + 1}"


def secret_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / f"secret-{uuid.uuid4().hex[:6]}"
    path.write_text(SECRET + "\n")
    path.chmod(mode)
    return path


def url_reading(kind: str, path: Path, host: str = "127.0.0.1") -> str:
    if kind == "zookeeper":
        return f"zookeeper://{host}:2181/x?username=app&password_file={path}"
    if kind == "etcd":
        return f"etcd://{host}:2379/x?username=app&password_file={path}"
    return f"consul://{host}:8500/x?token_file={path}"


def security_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "discovery.security"]


@pytest.mark.parametrize("kind", ["zookeeper", "etcd", "consul"])
@pytest.mark.parametrize(("mode", "who"), [(0o644, "group and others"), (0o640, "its group"), (0o604, "others")])
def test_a_secret_file_others_can_read_is_warned_about(kind: str, mode: int, who: str, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    path = secret_file(tmp_path, mode)
    create_backend(url_reading(kind, path))
    [warning] = security_warnings(caplog)
    parameter = "token_file" if kind == "consul" else "password_file"
    assert parameter in warning and str(path) in warning and who in warning and oct(mode) in warning
    assert "chmod 600" in warning and SECRET not in warning


@pytest.mark.parametrize("kind", ["zookeeper", "etcd", "consul"])
def test_a_private_secret_file_is_quiet(kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    create_backend(url_reading(kind, secret_file(tmp_path, 0o600)))
    assert security_warnings(caplog) == []


@pytest.mark.parametrize("kind", ["zookeeper", "etcd", "consul"])
def test_a_secret_without_tls_to_another_host_is_warned_about(kind: str, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    host = a_remote_host()
    create_backend(url_reading(kind, secret_file(tmp_path, 0o600), host))
    [warning] = security_warnings(caplog)
    what = "token" if kind == "consul" else "password"
    assert f"sends the {what} to {host}" in warning and "without TLS" in warning and "tls=true" in warning
    assert SECRET not in warning

    caplog.clear()
    create_backend(url_reading(kind, secret_file(tmp_path, 0o600), host))  # the same again: said once
    assert security_warnings(caplog) == []


def test_inline_and_environment_secrets_are_warned_about_too(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    create_backend(f"etcd://app:{SECRET}@{a_remote_host()}:2379/x")
    monkeypatch.setenv("DISCOVERY_CONSUL_TOKEN", SECRET)
    create_backend(f"consul://{a_remote_host()}:8500/x")
    warnings = security_warnings(caplog)
    assert len(warnings) == 2 and all("without TLS" in w and SECRET not in w for w in warnings)


def test_tls_or_loopback_is_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked until the handshake\n")
    create_backend(f"etcd://app:{SECRET}@{a_remote_host()}:2379/x?tls=true&ca={ca}")
    create_backend(f"etcd://app:{SECRET}@127.0.0.1:2379/x")
    create_backend(f"etcd://app:{SECRET}@localhost:2379/x")
    create_backend(f"consul://[::1]:8500/x?token={SECRET}")
    assert security_warnings(caplog) == []


@pytest.mark.parametrize("password", ["1234/5678", "9876/", "Qx7/Wv9", "1234?5678", "1234#5678", "Qx7#Wv9/Jk3?Lm5"])
def test_a_password_with_an_unescaped_delimiter_is_refused_not_misread(password: str) -> None:
    url = f"etcd://root:{password}@127.0.0.1:2379/prefix"
    with pytest.raises(ConfigurationError) as refused:
        parse_url(url)
    message = str(refused.value)
    assert "%2F" in message and password not in message
    for part in password.replace("/", " ").replace("?", " ").replace("#", " ").split():
        assert part not in message.replace("%2F", "").replace("%3F", "").replace("%23", "").replace("%40", "")
    assert redact_url(url) == "<malformed URL, not shown>"


def test_an_escaped_password_works_and_is_redacted() -> None:
    parsed = parse_url("etcd://root:12%2F34%3F%23@127.0.0.1:2379/prefix?ttl=5")
    assert parsed.password == "12/34?#" and [str(e) for e in parsed.endpoints] == ["127.0.0.1:2379"]
    assert redact_url("etcd://root:12%2F34@127.0.0.1:2379/prefix?ttl=5") == "etcd://root:***@127.0.0.1:2379/prefix?ttl=5"
    assert redact_url(f"consul://h:8500/s?token={SECRET}") == "consul://h:8500/s?token=***"
    assert redact_url(f"garbage {SECRET}") == "<malformed URL, not shown>"
    assert redact_url(None) == str(parse_url(os.environ.get("DISCOVERY_URL") or "memory://"))
    assert parse_url("zookeeper://h:2181/r?username=me@corp.example").params["username"] == "me@corp.example"
