"""Passwords and tokens never appear in CLI output, reprs, log records (every level) or exception chains."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from discovery import AsyncRegistry, Instance
from discovery.core.errors import DiscoveryError
from discovery.core.plugins import create_backend
from tests.harness.secure import CONSUL_SERVICE_PREFIX, ETCD_PREFIX, SecureServer

pytestmark = pytest.mark.servers

ZK_PASSWORD = "zk-Leak-Canary-8f1e"


def _urls(zookeeper: SecureServer, etcd: SecureServer, consul: SecureServer) -> dict[str, tuple[str, str]]:
    """Per backend: a working URL with a secret, and the secret."""
    etcd_password = etcd.credentials["app_password"]
    consul_token = consul.credentials["app_token"]
    return {
        "zookeeper": (
            f"{zookeeper.base_url}/leak-{uuid.uuid4().hex[:8]}?session_timeout=2&{zookeeper.tls_query()}"
            f"&username=app&password={ZK_PASSWORD}",
            ZK_PASSWORD,
        ),
        "etcd": (
            f"{etcd.base_url}{ETCD_PREFIX}/leak?ttl=2&{etcd.tls_query()}&username=app&password={etcd_password}",
            etcd_password,
        ),
        "consul": (
            f"{consul.base_url}/{CONSUL_SERVICE_PREFIX}leak?ttl=2&{consul.tls_query()}&token={consul_token}",
            consul_token,
        ),
    }


@pytest.fixture
def everything_logged() -> Iterator[list[str]]:
    """Every log record of every logger, at every level, formatted with its arguments."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep(level=1)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(1)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _exception_text(error: BaseException) -> str:
    parts: list[str] = []
    seen: BaseException | None = error
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


@pytest.mark.parametrize("kind", ["zookeeper", "etcd", "consul"])
async def test_reprs_and_logs_hold_no_secret(
    kind: str,
    secure_zookeeper: SecureServer,
    secure_etcd: SecureServer,
    secure_consul: SecureServer,
    everything_logged: list[str],
) -> None:
    url, secret = _urls(secure_zookeeper, secure_etcd, secure_consul)[kind]
    service = f"{CONSUL_SERVICE_PREFIX}leak"
    async with await AsyncRegistry.connect(url) as registry:
        registration = await registry.register(Instance(service, "l-1", "10.0.0.1", 1))
        assert [i.id for i in await registry.instances(service)] == ["l-1"]
        backend = registry.backend
        texts = [repr(registry), repr(backend), repr(registration), str(create_backend(url).__dict__)]
        texts += [repr(getattr(backend, name, None)) for name in ("config", "_settings", "settings", "_pool")]
    assert everything_logged, "nothing was logged at all: the capture is broken"
    for text in texts + everything_logged:
        assert secret not in text, text


@pytest.mark.parametrize("kind", ["zookeeper", "etcd", "consul"])
async def test_failures_hold_no_secret(
    kind: str,
    secure_zookeeper: SecureServer,
    secure_etcd: SecureServer,
    secure_consul: SecureServer,
    everything_logged: list[str],
) -> None:
    url, secret = _urls(secure_zookeeper, secure_etcd, secure_consul)[kind]
    wrong = f"wrong-{uuid.uuid4().hex}"
    bad_url = url.replace(secret, wrong)
    if kind == "zookeeper":  # a root owned by the right password, then the wrong one
        async with await AsyncRegistry.connect(url):
            pass
    with pytest.raises(DiscoveryError) as caught:
        await AsyncRegistry.connect(bad_url)
    for text in [_exception_text(caught.value), *everything_logged]:
        assert wrong not in text and secret not in text, text


def test_cli_output_holds_no_secret(
    secure_zookeeper: SecureServer, secure_etcd: SecureServer, secure_consul: SecureServer
) -> None:
    for kind, (url, secret) in _urls(secure_zookeeper, secure_etcd, secure_consul).items():
        wrong = f"wrong-{uuid.uuid4().hex}"
        for attempt, hidden in ((url, secret), (url.replace(secret, wrong), wrong)):
            for argv in (["list", f"{CONSUL_SERVICE_PREFIX}leak", "--all"],):
                done = subprocess.run(
                    [sys.executable, "-m", "discovery.cli", "--url", attempt, *argv],
                    capture_output=True, text=True, timeout=60, check=False,
                    env={**os.environ, "DISCOVERY_URL": attempt, "PYTHONPATH": os.getcwd()},
                )
                output = done.stdout + done.stderr
                assert hidden not in output, f"{kind} {argv}: {output}"
                if hidden == wrong:  # the refusal is reported, just without the secret
                    assert done.returncode != 0 and output.strip(), f"{kind} {argv}: {done.returncode} {output}"
