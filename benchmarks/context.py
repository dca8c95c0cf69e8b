"""What one run shares: the profile (iteration counts), the servers, fresh targets and the anchor launchers."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.procs import REPO_ROOT, Worker
from benchmarks.tools import Target
from tests.harness import ServerHandle, start_server

REAL_BACKENDS = ("zookeeper", "etcd", "consul")
ALL_BACKENDS = ("memory", *REAL_BACKENDS)
VENVS = REPO_ROOT / "benchmarks" / ".venvs"
CURATOR_JARS = (
    "curator-x-discovery", "curator-recipes", "curator-framework", "curator-client", "zookeeper", "zookeeper-jute",
    "guava",
    "jackson-core", "jackson-databind", "jackson-annotations", "slf4j-api", "slf4j-nop",
)
#: Each backend's smallest TTL (ZooKeeper: 2 x the harness tick of 0.5 s; etcd: its 2 s lease floor).
MIN_TTL = {"memory": 0.5, "zookeeper": 1.0, "etcd": 2.0, "consul": 1.0}


@dataclass(frozen=True)
class Profile:
    """Iteration counts. ``quick`` is the CI smoke check (seconds, no anchors); ``full`` the published run."""

    name: str
    propagation_trials: int
    register_count: int
    register_concurrent_count: int
    register_rounds: int  # scenario 2: each tool's timed run, this many times, the tools taking turns
    detection_trials: int
    detection_ttl: float | None  # None = each backend's minimum
    restore_trials: int
    lookup_batches: int
    lookup_batch_size: int
    uncached_reads: int
    scale_sizes: tuple[int, ...]  # instance counts; services = subscribers = instances / 10
    scale_real_backends: tuple[str, ...]
    scale_fanout_changes: int
    anchors: bool


PROFILES = {
    "quick": Profile("quick", 4, 20, 64, 1, 1, None, 1, 10, 200, 10, (200,), ("zookeeper", "etcd", "consul"), 2, False),
    "full": Profile("full", 40, 300, 1600, 3, 5, 3.0, 5, 200, 1000, 200, (1000, 10000, 50000),
                    ("zookeeper", "etcd", "consul"), 10, True),
}


@dataclass
class RunContext:
    """Servers by backend, the profile, and helpers to make unique targets and anchor workers."""

    profile: Profile
    provider: str
    servers: dict[str, ServerHandle] = field(default_factory=dict)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _curator_classpath: str | None = None

    def start(self, backends: tuple[str, ...]) -> None:
        """Start one server per real backend with the test harness."""
        for backend in backends:
            if backend in REAL_BACKENDS:
                print(f"starting {backend} ({self.provider}) ...", flush=True)
                self.servers[backend] = self._stack.enter_context(start_server(backend, self.provider))

    def close(self) -> None:
        """Stop the servers."""
        self._stack.close()

    def target(self, backend: str, service: str, ttl: float | None = None) -> Target:
        """A target in a fresh scope, so that no measurement sees another's keys."""
        scope = f"bench-{uuid.uuid4().hex[:10]}"
        ttl = ttl if ttl is not None else max(MIN_TTL[backend], 3.0)
        if backend == "memory":
            return Target(backend, "", 0, scope, service, ttl)
        server = self.servers[backend]
        return Target(backend, server.host, server.port, scope, service, ttl)

    # ------------------------------------------------------------------------------------------- workers

    def python_worker(self, role: str, tool: str, target: Target) -> Worker:
        """A :mod:`benchmarks.worker` process in the main venv."""
        import json
        from dataclasses import asdict

        argv = [sys.executable, "-m", "benchmarks.worker", role, tool, json.dumps(asdict(target))]
        return Worker(argv, label=f"{tool} {role}er ({target.backend})")

    def tooz_python(self, backend: str) -> Path | None:
        """The anchor venv's python for tooz on ``backend``, or None when setup_anchors.sh has not run."""
        venv = VENVS / ("tooz-consul" if backend == "consul" else "tooz")
        python = venv / "bin" / "python"
        return python if python.exists() else None

    def tooz_url(self, target: Target) -> str:
        """The tooz coordination URL of a target's server."""
        host, port, ttl = target.host, target.port, int(max(target.ttl, 1))
        if target.backend == "zookeeper":
            return f"kazoo://{host}:{port}?timeout={ttl}"
        if target.backend == "etcd":
            return f"etcd3+http://{host}:{port}?api_version=v3&timeout={ttl}"
        return f"consul://{host}:{port}?ttl={max(ttl, 10)}&namespace={target.scope}"

    def tooz_worker(self, role: str, target: Target) -> Worker:
        """An ``anchors/tooz_worker.py`` process in its anchor venv."""
        python = self.tooz_python(target.backend)
        if python is None:
            raise FileNotFoundError("anchor venvs missing: run bash benchmarks/setup_anchors.sh")
        script = REPO_ROOT / "benchmarks" / "anchors" / "tooz_worker.py"
        group = f"{target.scope}-{target.service}"
        return Worker([str(python), str(script), role, self.tooz_url(target), group], label=f"tooz {role}er")

    def curator_classpath(self) -> str:
        """Compile ``anchors/CuratorBench.java`` once; the classpath to run it."""
        if self._curator_classpath is None:
            javac = shutil.which("javac")
            jars = [Path(f"/usr/share/java/{name}.jar") for name in CURATOR_JARS]
            missing = [str(jar) for jar in jars if not jar.exists()]
            if javac is None or missing:
                raise FileNotFoundError(
                    f"Curator anchor needs javac and the Curator jars (missing: {missing or 'javac'})"
                )
            classes = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="curator-bench-")))
            classpath = ":".join(str(jar) for jar in jars)
            source = REPO_ROOT / "benchmarks" / "anchors" / "CuratorBench.java"
            subprocess.run([javac, "-d", str(classes), "-cp", classpath, str(source)], check=True, capture_output=True)
            self._curator_classpath = f"{classes}:{classpath}"
        return self._curator_classpath

    def curator_worker(self, role: str, target: Target, *extra: str) -> Worker:
        """A ``CuratorBench`` JVM (base path ``/<scope>/default``, the layout ours uses)."""
        argv = ["java", "-Xmx256m", "-cp", self.curator_classpath(), "CuratorBench",
                role, f"{target.host}:{target.port}", f"/{target.scope}/default", target.service, *extra]
        return Worker(argv, label=f"curator {role}er")
