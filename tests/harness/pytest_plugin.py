"""pytest plugin: real servers for tests (load with ``pytest_plugins = ["tests.harness.pytest_plugin"]``).

Option ``--servers=container|process|external`` (default: env ``DISCOVERY_TEST_SERVERS``, else ``container``
when the Docker daemon answers, else ``process``). Options ``--zookeeper-version=3.8|3.9`` and
``--etcd-version=3.4|3.5`` pick the server version (default: env ``DISCOVERY_TEST_<KIND>_VERSION``, else the
first; the option sets that variable, so subprocesses see the same choice).

Fixtures:
  * ``server_provider`` (session) - the provider in use.
  * ``zookeeper_server`` / ``etcd_server`` / ``consul_server`` (session) - a shared :class:`ServerHandle`,
    started lazily on first use (and restarted if a test left it stopped). Do not kill or wipe these.
  * ``fresh_server`` (function) - factory ``fresh_server(kind) -> ServerHandle`` for a private server that the
    test may stop/kill/wipe; closed at the end of the test.

A server that cannot start skips the test with the reason - except under ``CI=true``, where it fails the test
with the server's log tail (CI never silently skips server tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from .servers import DEFAULT_ARTIFACTS_DIR, PROVIDERS, ServerError, ServerHandle, start_server
from .specs import KINDS, VERSIONS, VersionError, server_version

_POOL_KEY = pytest.StashKey["ServerPool"]()
_PROVIDER_KEY = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("discovery-servers", "real ZooKeeper / etcd / Consul servers")
    group.addoption(
        "--servers",
        choices=PROVIDERS,
        default=None,
        help="how to run real servers: container (local images, host networking), process (Debian binaries) or "
        "external (DISCOVERY_TEST_<KIND>_URL). Default: $DISCOVERY_TEST_SERVERS, else container if the Docker "
        "daemon answers, else process.",
    )


    for kind, versions in VERSIONS.items():
        if len(versions) > 1:
            group.addoption(
                f"--{kind}-version",
                choices=versions,
                default=None,
                help=f"{kind} version to run (default: $DISCOVERY_TEST_{kind.upper()}_VERSION, else {versions[0]})",
            )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "servers: needs real servers from the harness")
    for kind, versions in VERSIONS.items():
        chosen = config.getoption(f"--{kind}-version", None) if len(versions) > 1 else None
        if chosen:
            os.environ[f"DISCOVERY_TEST_{kind.upper()}_VERSION"] = chosen
        try:
            server_version(kind)
        except VersionError as error:
            raise pytest.UsageError(str(error)) from None


def pytest_report_header(config: pytest.Config) -> str:
    versions = ", ".join(f"{kind} {server_version(kind)}" for kind in KINDS)
    return f"real servers: {resolve_provider(config)}, {versions} (logs: {artifacts_dir()})"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def docker_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=15, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def resolve_provider(config: pytest.Config) -> str:
    """The provider for this session (resolved once, then cached on the config)."""
    cached = config.stash.get(_PROVIDER_KEY, None)
    if cached is None:
        cached = config.stash[_PROVIDER_KEY] = _resolve_provider(config)
    return cached


def _resolve_provider(config: pytest.Config) -> str:
    chosen = config.getoption("--servers") or os.environ.get("DISCOVERY_TEST_SERVERS")
    if chosen:
        if chosen not in PROVIDERS:
            raise pytest.UsageError(f"DISCOVERY_TEST_SERVERS={chosen!r}: expected one of {PROVIDERS}")
        return str(chosen)
    return "container" if docker_answers() else "process"


def unavailable(message: str) -> NoReturn:
    """Skip locally, fail in CI."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def artifacts_dir() -> Path:
    env = os.environ.get("DISCOVERY_TEST_ARTIFACTS_DIR")
    return Path(env) if env else DEFAULT_ARTIFACTS_DIR


class ServerPool:
    """Session-wide servers, one per kind, started on first request; a failed start is remembered."""

    def __init__(self, provider: str, artifacts: Path) -> None:
        self.provider = provider
        self.artifacts = artifacts
        self._handles: dict[str, ServerHandle] = {}
        self._errors: dict[str, str] = {}

    def get(self, kind: str) -> ServerHandle:
        if kind in self._errors:
            raise ServerError(self._errors[kind])
        handle = self._handles.get(kind)
        try:
            if handle is None:
                handle = self._handles[kind] = start_server(kind, self.provider, artifacts_dir=self.artifacts)
            elif self.provider != "external" and not handle.running:
                handle.start()  # a test stopped the shared server: bring it back
        except ServerError as exc:
            self._errors[kind] = f"{kind} server ({self.provider}) unavailable: {exc}"
            raise ServerError(self._errors[kind]) from exc
        return handle

    @property
    def started(self) -> bool:
        return bool(self._handles)

    def close(self) -> None:
        while self._handles:
            _, handle = self._handles.popitem()
            handle.close()


@pytest.fixture(scope="session")
def server_provider(pytestconfig: pytest.Config) -> str:
    return resolve_provider(pytestconfig)


@pytest.fixture(scope="session")
def server_pool(pytestconfig: pytest.Config, server_provider: str) -> Iterator[ServerPool]:
    pool = ServerPool(server_provider, artifacts_dir())
    pytestconfig.stash[_POOL_KEY] = pool
    try:
        yield pool
    finally:
        pool.close()


def _shared(pool: ServerPool, kind: str) -> ServerHandle:
    try:
        return pool.get(kind)
    except ServerError as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def zookeeper_server(server_pool: ServerPool) -> ServerHandle:
    return _shared(server_pool, "zookeeper")


@pytest.fixture(scope="session")
def etcd_server(server_pool: ServerPool) -> ServerHandle:
    return _shared(server_pool, "etcd")


@pytest.fixture(scope="session")
def consul_server(server_pool: ServerPool) -> ServerHandle:
    return _shared(server_pool, "consul")


@pytest.fixture
def fresh_server(server_provider: str) -> Iterator[Callable[[str], ServerHandle]]:
    handles: list[ServerHandle] = []

    def make(kind: str) -> ServerHandle:
        if kind not in KINDS:
            raise ValueError(f"unknown server kind {kind!r}; expected one of {KINDS}")
        if server_provider == "external":
            unavailable(f"fresh_server({kind!r}) needs --servers=process or --servers=container (not external)")
        try:
            handle = start_server(kind, server_provider, artifacts_dir=artifacts_dir())
        except ServerError as exc:
            unavailable(f"fresh {kind} server ({server_provider}) unavailable: {exc}")
        handles.append(handle)
        return handle

    try:
        yield make
    finally:
        for handle in handles:
            handle.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    pool = config.stash.get(_POOL_KEY, None)
    if pool is not None and exitstatus != 0 and pool.provider != "external":
        terminalreporter.write_line(f"real-server logs ({pool.provider}): {pool.artifacts}")
