"""Start real ZooKeeper / etcd / Consul servers for tests: as local processes, as containers, or external.

All three providers share one code path (``ServerHandle``); they differ only in a runner that knows how to
launch a command line (a mirakuru-managed subprocess or a testcontainers container) and in the per-server
facts of :mod:`tests.harness.specs`. Every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol, cast
from urllib.parse import urlsplit

from mirakuru import Executor
from mirakuru.exceptions import AlreadyRunning, ExecutorError, ProcessFinishedWithError, TimeoutExpired

from .specs import KINDS, SPECS, Launch, ServerSpec, VersionError

PROVIDERS = ("container", "process", "external")
HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARTIFACTS_DIR = REPO_ROOT / ".artifacts" / "servers"
START_TIMEOUT_S = float(os.environ.get("DISCOVERY_TEST_START_TIMEOUT", "60"))
STOP_TIMEOUT_S = 15.0
CONTAINER_LABEL = "org.discovery-test.harness"

_counter = itertools.count(1)


class ServerError(RuntimeError):
    """A harness server could not be started / stopped; the message carries the log tail."""


class ExternalServerError(ServerError):
    """Lifecycle operations (stop, kill, start, wipe_data) are impossible on an external server."""


def _log_tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------ ports


def free_ports(names: tuple[str, ...], udp: frozenset[str] = frozenset(), host: str = HOST) -> dict[str, int]:
    """Pick distinct free ports on ``host`` (default 127.0.0.1) by binding port 0 (UDP checked too for ``udp``
    names).

    All sockets stay open until every port is chosen, so the ports are distinct from each other.
    """
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        for name in names:
            for _ in range(50):
                tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                tcp.bind((host, 0))
                port = int(tcp.getsockname()[1])
                held.append(tcp)
                if name in udp:
                    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    try:
                        u.bind((host, port))
                    except OSError:
                        u.close()
                        continue
                    held.append(u)
                ports[name] = port
                break
            else:  # pragma: no cover - 50 TCP ports in a row busy for UDP
                raise ServerError(f"no free TCP+UDP port for {name} on {host}")
    finally:
        for s in held:
            s.close()
    return ports


def free_port(host: str = HOST) -> int:
    """One port nobody listens on right now (a test's own server, or a dead address to fail against)."""
    return free_ports(("port",), host=host)["port"]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


# ---------------------------------------------------------------------------------------------- runners


class _Runner(Protocol):
    """Runs one command line; knows nothing about which server it is."""

    def start(self, ready: Callable[[], bool], timeout: float) -> None: ...
    def alive(self) -> bool: ...
    def stop(self, timeout: float) -> int | None: ...
    def kill(self) -> None: ...
    def log_text(self) -> str: ...
    def close(self) -> None: ...


class _ServerExecutor(Executor):
    """mirakuru executor whose readiness is the handle's check (log line + probe); busy port = AlreadyRunning."""

    def __init__(
        self,
        argv: list[str],
        *,
        ready: Callable[[], bool],
        busy: Callable[[], bool],
        timeout: float,
        log: IO[str],
        cwd: str,
    ) -> None:
        self._ready = ready
        self._busy = busy
        super().__init__(argv, shell=False, timeout=timeout, sleep=0.1, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)

    def pre_start_check(self) -> bool:
        return self._busy()

    def after_start_check(self) -> bool:
        return self._ready()


class ProcessRunner:
    """The Debian binary as a subprocess in its own process group (mirakuru); output appended to the log file."""

    def __init__(self, argv: list[str], log_path: Path, cwd: Path, busy: Callable[[], bool]) -> None:
        self._argv = argv
        self._log_path = log_path
        self._cwd = cwd
        self._busy = busy
        self._log: IO[str] | None = None
        self._executor: _ServerExecutor | None = None

    def start(self, ready: Callable[[], bool], timeout: float) -> None:
        self._log = self._log or open(self._log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._executor = _ServerExecutor(
            self._argv, ready=ready, busy=self._busy, timeout=timeout, log=self._log, cwd=str(self._cwd)
        )
        try:
            self._executor.start()
        except AlreadyRunning as exc:
            raise ServerError(f"port already taken by another process: {exc}") from exc
        except TimeoutExpired as exc:
            raise ServerError(f"not ready within {timeout:.0f}s") from exc
        except ExecutorError as exc:  # ProcessExitedWithError
            raise ServerError(f"exited during start: {exc}") from exc

    def alive(self) -> bool:
        return self._executor is not None and bool(self._executor.running())

    def stop(self, timeout: float) -> int | None:
        ex, self._executor = self._executor, None
        if ex is None or ex.process is None:
            return None
        proc = ex.process
        ex._timeout = timeout  # noqa: SLF001 - mirakuru's only knob for how long stop() waits before SIGKILL
        try:
            ex.stop()
        except ProcessFinishedWithError as err:
            return int(err.exit_code)
        return cast(int | None, proc.returncode)

    def kill(self) -> None:
        ex, self._executor = self._executor, None
        if ex is not None:
            ex.kill(sig=signal.SIGKILL)

    def log_text(self) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            return self._log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        if self._executor is not None:
            self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None


def _testcontainers_env() -> None:
    # No Ryuk (it would need a pull); this VM has /.dockerenv, so testcontainers would otherwise try to
    # reach the "host" through a bridge gateway: tell it to use the daemon host and 127.0.0.1.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    os.environ.setdefault("TC_HOST", HOST)


class ContainerRunner:
    """The command line in a container (testcontainers), host networking or published 127.0.0.1 ports.

    stop/kill/start reuse the same container (``docker stop`` / ``docker kill -s KILL`` / ``docker start``), so
    ``docker logs`` holds every run; the workdir is bind-mounted at the same path so data survives and
    ``wipe_data`` is a host-side delete.
    """

    def __init__(
        self, image: str, argv: list[str], name: str, workdir: Path, log_path: Path, published: Mapping[int, int] | None
    ) -> None:
        _testcontainers_env()
        from testcontainers.core.container import DockerContainer

        self._log_path = log_path
        self._container = DockerContainer(image, command=argv, name=name)  # type: ignore[arg-type]
        self._container.with_volume_mapping(str(workdir), str(workdir), "rw")
        kwargs: dict[str, Any] = {"labels": {CONTAINER_LABEL: "1"}, "init": False}
        if published is None:
            kwargs["network_mode"] = "host"
        else:
            ports = cast(dict[str, Any], self._container.ports)
            for inside, outside in published.items():
                ports[f"{inside}/tcp"] = (HOST, outside)
        self._container.with_kwargs(**kwargs)
        self._started = False

    def _wrapped(self) -> Any:
        return self._container.get_wrapped_container()

    def start(self, ready: Callable[[], bool], timeout: float) -> None:
        try:
            if not self._started:
                self._container.start()
                self._started = True
            else:
                self._wrapped().start()
        except Exception as exc:
            hint = " (build the local images: scripts/build-images.sh)" if "discovery-test/" in str(exc) else ""
            raise ServerError(f"container did not start: {exc}{hint}") from exc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(f"container exited during start (status {self._status()})")
            if ready():
                return
            time.sleep(0.1)
        self.kill()
        raise ServerError(f"not ready within {timeout:.0f}s")

    def _status(self) -> str:
        try:
            w = self._wrapped()
            w.reload()
            return str(w.status)
        except Exception:  # container gone
            return "gone"

    def alive(self) -> bool:
        return self._started and self._status() == "running"

    def stop(self, timeout: float) -> int | None:
        if not self.alive():
            return None
        w = self._wrapped()
        w.stop(timeout=int(timeout))
        w.reload()
        self._save_log()
        return int(w.attrs["State"]["ExitCode"])

    def kill(self) -> None:
        if self.alive():
            self._wrapped().kill(signal="KILL")
            self._wrapped().wait(timeout=30)
        self._save_log()

    def log_text(self) -> str:
        if not self._started:
            return ""
        try:
            out = self._wrapped().logs(stdout=True, stderr=True)
        except Exception:  # container gone: fall back to the saved copy
            return self._log_path.read_text(encoding="utf-8", errors="replace") if self._log_path.exists() else ""
        return cast(bytes, out).decode("utf-8", errors="replace")

    def _save_log(self) -> None:
        if self._started:
            self._log_path.write_text(self.log_text(), encoding="utf-8")

    def close(self) -> None:
        if self._started:
            self._save_log()
            with contextlib.suppress(Exception):  # already removed
                self._container.stop(force=True)
            self._started = False


# ----------------------------------------------------------------------------------------------- handle


class ServerHandle:
    """One running server, whichever provider started it.

    ``port`` is the client port (ZooKeeper client port, etcd client port, Consul HTTP port); ``ports`` names
    every port the server uses (ZooKeeper ``client``; etcd ``client``, ``peer``; Consul ``http``, ``dns``,
    ``serf_lan``, ``serf_wan``, ``server``). ``url`` is the discovery URL (``zookeeper://127.0.0.1:PORT``,
    ``etcd://...``, ``consul://...``).

    Lifecycle: ``stop()`` is graceful (SIGTERM / ``docker stop``), ``kill()`` is SIGKILL
    (``docker kill -s KILL``), ``start()`` restarts on the same ports and returns when ready.
    ZooKeeper and etcd keep their data dir across stop/kill + start (``wipe_data()`` while stopped clears it).
    Consul runs ``agent -dev``: its state is in memory, so a restart is an *agent restart with state loss*
    (all services, checks and KV entries are gone) - which is what the Consul backend's tests want;
    ``wipe_data()`` is a no-op for it.

    External servers (``provider="external"``) only have kind/host/port/ports/url (``ports`` holds the client
    port plus any ``DISCOVERY_TEST_<KIND>_<NAME>_PORT`` given, e.g. ``DISCOVERY_TEST_CONSUL_DNS_PORT``);
    lifecycle calls raise :class:`ExternalServerError`.
    """

    def __init__(
        self,
        spec: ServerSpec,
        provider: str,
        host: str,
        ports: dict[str, int],
        *,
        runner: _Runner | None = None,
        launch: Launch | None = None,
        workdir: Path | None = None,
        log_path: Path | None = None,
        url: str | None = None,
    ) -> None:
        self.spec = spec
        self.kind = spec.kind
        self.provider = provider
        self.host = host
        self.ports = dict(ports)
        self.port = self.ports[spec.client_port]
        self.url = url or f"{spec.kind}://{host}:{self.port}"
        self.log_path = log_path
        self._runner = runner
        self._launch = launch
        self._workdir = workdir
        self._log_offset = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"<ServerHandle {self.kind} {self.provider} {self.url}>"

    @property
    def keeps_data(self) -> bool:
        return self.spec.keeps_data

    @property
    def running(self) -> bool:
        return self._runner is not None and self._runner.alive()

    def _need_runner(self, op: str) -> _Runner:
        if self._runner is None or self._launch is None:
            raise ExternalServerError(
                f"{op}() is not possible on an external {self.kind} server ({self.url}); "
                "use --servers=process or --servers=container for tests that restart servers"
            )
        if self._closed:
            raise ServerError(f"{self!r} is closed")
        return self._runner

    def _ready(self) -> bool:
        """Readiness: this run's own ready log lines AND the health probe (a probe alone can hit a stranger)."""
        assert self._runner is not None and self._launch is not None
        text = self._runner.log_text()[self._log_offset :]
        if not all(p.search(text) for p in self.spec.ready_patterns(self._launch)):
            return False
        return self.spec.probe(self.host, self.port)

    def start(self) -> None:
        runner = self._need_runner("start")
        if runner.alive():
            return
        assert self._launch is not None
        self._launch.data_dir.mkdir(parents=True, exist_ok=True)
        for name, content in self.spec.files(self._launch).items():
            (self._launch.workdir / name).write_text(content, encoding="utf-8")
        self._log_offset = len(runner.log_text())
        try:
            runner.start(self._ready, START_TIMEOUT_S)
        except ServerError as exc:
            raise ServerError(
                f"{self.kind} ({self.provider}) on {self.url}: {exc}\n--- log tail "
                f"({self.log_path}) ---\n{_log_tail(self.logs())}"
            ) from exc

    def stop(self) -> None:
        code = self._need_runner("stop").stop(STOP_TIMEOUT_S)
        if code is not None and code not in self.spec.stop_exit_codes:
            raise ServerError(f"{self.kind} stopped with exit code {code}\n{_log_tail(self.logs())}")

    def kill(self) -> None:
        self._need_runner("kill").kill()

    def wipe_data(self) -> None:
        runner = self._need_runner("wipe_data")
        if runner.alive():
            raise ServerError(f"wipe_data() needs a stopped server; {self!r} is running")
        assert self._launch is not None
        shutil.rmtree(self._launch.data_dir, ignore_errors=True)
        self._launch.data_dir.mkdir(parents=True)

    def logs(self) -> str:
        if self._runner is None:
            return ""
        return self._runner.log_text()

    def close(self) -> None:
        if self._closed or self._runner is None:
            return
        self._closed = True
        try:
            if self._runner.alive():
                try:
                    self._runner.stop(STOP_TIMEOUT_S)
                except Exception:  # make sure it is gone
                    self._runner.kill()
        finally:
            self._runner.close()
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------ start_server


def _external(spec: ServerSpec) -> ServerHandle:
    url = os.environ.get(spec.url_env)
    if not url:
        raise ServerError(f"--servers=external needs {spec.url_env} (e.g. {spec.kind}://127.0.0.1:PORT)")
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ServerError(f"{spec.url_env}={url!r} has no host")
    ports = {spec.client_port: parts.port or spec.standard_ports[spec.client_port]}
    for name in spec.port_names:  # other ports only when given, e.g. DISCOVERY_TEST_CONSUL_DNS_PORT=8600
        value = os.environ.get(f"{spec.env_prefix}_{name.upper()}_PORT")
        if value and name != spec.client_port:
            ports[name] = int(value)
    return ServerHandle(spec, "external", parts.hostname, ports, url=url)


def _use_published_ports(image: str) -> bool:
    """Host networking for the locally built images; published ports for anything else (official images)."""
    mode = os.environ.get("DISCOVERY_TEST_CONTAINER_NETWORK", "")
    if mode in ("host", "ports"):
        return mode == "ports"
    return not image.startswith("discovery-test/")


def start_server(kind: str, provider: str, *, artifacts_dir: Path | None = None) -> ServerHandle:
    """Start a ``kind`` server ("zookeeper" | "etcd" | "consul") with ``provider`` and wait until it is ready.

    Raises :class:`ServerError` (with the log tail) if it does not come up. The server log is kept in
    ``artifacts_dir`` (default ``.artifacts/servers/`` in the repo).
    """
    if kind not in SPECS:
        raise ValueError(f"unknown server kind {kind!r}; expected one of {KINDS}")
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; expected one of {PROVIDERS}")
    spec = SPECS[kind]
    if provider == "external":
        return _external(spec)

    artifacts = Path(artifacts_dir) if artifacts_dir is not None else DEFAULT_ARTIFACTS_DIR
    artifacts.mkdir(parents=True, exist_ok=True)
    n = next(_counter)
    tag = f"{kind}-{provider}-{os.getpid()}-{n}"
    log_path = artifacts / f"{tag}.log"
    workdir = Path(tempfile.mkdtemp(prefix=f"discovery-{kind}-"))
    host_ports = free_ports(spec.port_names, spec.udp_ports)

    try:
        runner, launch = _runner(spec, provider, tag, workdir, host_ports, log_path)
    except VersionError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServerError(str(exc)) from exc
    handle = ServerHandle(
        spec, provider, HOST, host_ports, runner=runner, launch=launch, workdir=workdir, log_path=log_path
    )
    try:
        handle.start()
    except BaseException:
        handle.close()
        raise
    return handle


def _runner(
    spec: ServerSpec, provider: str, tag: str, workdir: Path, host_ports: dict[str, int], log_path: Path
) -> tuple[_Runner, Launch]:
    """The runner of one server (a process or a container) and where it listens."""
    runner: _Runner
    if provider == "process":
        launch = Launch(HOST, host_ports, workdir)
        cp = spec.client_port
        runner = ProcessRunner(spec.argv(launch), log_path, workdir, busy=lambda: port_in_use(HOST, host_ports[cp]))
    else:
        image = spec.image
        if _use_published_ports(image):
            # official image: standard ports inside its own network namespace, published on 127.0.0.1
            workdir.chmod(0o777)  # official images drop root
            launch = Launch("0.0.0.0", spec.standard_ports, workdir, official_image=True)
            published: dict[int, int] | None = {spec.standard_ports[p]: host_ports[p] for p in spec.port_names}
        else:
            launch = Launch(HOST, host_ports, workdir)
            published = None
        runner = ContainerRunner(image, spec.argv(launch), f"discovery-test-{tag}", workdir, log_path, published)
    return runner, launch
