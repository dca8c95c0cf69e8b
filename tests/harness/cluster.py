"""Three-node ZooKeeper ensembles, etcd clusters and Consul server clusters on 127.0.0.2/3/4.

    with start_cluster("etcd", "process") as cluster:
        url = f"etcd://{cluster.hosts}/prefix"         # every member's client endpoint
        leader = cluster.leader()                       # index into cluster.members
        cluster.members[leader].kill()                  # kill -9 the leader; the others elect a new one
        cluster.members[leader].start()                 # rejoin with its data kept

Each member is a :class:`ServerHandle` (kill/start/stop/logs work as for a single server) listening on its own
loopback address (Linux routes all of 127.0.0.0/8 to ``lo`` without configuration) with free ports picked on
that address; members run as processes or as host-network containers of the same images as single servers.
Members start in parallel, because a member is only ready once a quorum exists.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .servers import (
    DEFAULT_ARTIFACTS_DIR,
    ContainerRunner,
    ProcessRunner,
    ServerError,
    ServerHandle,
    free_ports,
    port_in_use,
)
from .specs import (
    SPECS,
    ZK_TICK_MS,
    Launch,
    ServerSpec,
    VersionError,
    _etcd_health,
    _zk_argv,
    etcd_command,
    zk_four_letter_word,
)

CLUSTER_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PORT_NAMES = {
    "zookeeper": ("client", "peer", "election"),
    "etcd": ("client", "peer"),
    "consul": ("http", "serf_lan", "serf_wan", "server"),
}
UDP_PORTS = frozenset({"serf_lan", "serf_wan"})


def _srvr(host: str, port: int) -> str:
    return zk_four_letter_word(host, port, b"srvr")


def _zk_serving(host: str, port: int) -> bool:
    return "Mode: " in _srvr(host, port)


def _http(url: str, body: bytes | None = None) -> object:
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=1.0) as response:
        return json.loads(response.read().decode())


def _consul_has_leader(host: str, port: int) -> bool:
    try:
        return bool(_http(f"http://{host}:{port}/v1/status/leader"))
    except (OSError, ValueError):
        return False


def _member_specs(kind: str, plan: list[dict[str, int]], token: str) -> list[ServerSpec]:
    base = SPECS[kind]
    specs = []
    for index in range(len(plan)):
        if kind == "zookeeper":
            servers = [f"server.{n + 1}={CLUSTER_HOSTS[n]}:{p['peer']}:{p['election']}" for n, p in enumerate(plan)]

            def files(launch: Launch, myid: int = index + 1, servers: list[str] = servers) -> dict[str, str]:
                cfg = [
                    f"tickTime={ZK_TICK_MS}", f"minSessionTimeout={2 * ZK_TICK_MS}", "maxSessionTimeout=60000",
                    "initLimit=10", "syncLimit=5", f"dataDir={launch.data_dir}",
                    f"clientPort={launch.ports['client']}", f"clientPortAddress={launch.listen_host}",
                    "admin.enableServer=false", "4lw.commands.whitelist=*", *servers, "",
                ]
                return {"zoo.cfg": "\n".join(cfg), "data/myid": f"{myid}\n"}

            specs.append(dataclasses.replace(
                base, files=files, argv=_zk_argv, ready_log=(r"binding to port \S*:{client}\b",), probe=_zk_serving
            ))
        elif kind == "etcd":
            initial = ",".join(f"n{n + 1}=http://{CLUSTER_HOSTS[n]}:{p['peer']}" for n, p in enumerate(plan))

            def etcd_argv(launch: Launch, name: str = f"n{index + 1}", initial: str = initial) -> list[str]:
                h, p = launch.listen_host, launch.ports
                return [
                    etcd_command(), f"--name={name}", f"--data-dir={launch.data_dir}",
                    f"--listen-client-urls=http://{h}:{p['client']}", f"--advertise-client-urls=http://{h}:{p['client']}",
                    f"--listen-peer-urls=http://{h}:{p['peer']}", f"--initial-advertise-peer-urls=http://{h}:{p['peer']}",
                    f"--initial-cluster={initial}", "--initial-cluster-state=new", f"--initial-cluster-token={token}",
                ]

            specs.append(dataclasses.replace(base, argv=etcd_argv, probe=_etcd_health))
        else:
            joins = [f"-retry-join={CLUSTER_HOSTS[n]}:{p['serf_lan']}" for n, p in enumerate(plan) if n != index]

            def consul_argv(launch: Launch, name: str = f"n{index + 1}", joins: list[str] = joins) -> list[str]:
                h, p = launch.listen_host, launch.ports
                return [
                    "consul", "agent", "-server", "-bootstrap-expect=3", f"-node={name}",
                    f"-data-dir={launch.data_dir}",
                    f"-bind={h}", f"-advertise={h}", f"-client={h}", f"-http-port={p['http']}", "-dns-port=-1",
                    f"-serf-lan-port={p['serf_lan']}", f"-serf-wan-port={p['serf_wan']}",
                    f"-server-port={p['server']}", "-grpc-port=-1", "-https-port=-1", *joins,
                    # Production raft timing (multiplier 1) instead of the default 5x slower one.
                    "-hcl=performance { raft_multiplier = 1 }", "-log-level=info",
                ]

            specs.append(dataclasses.replace(
                base, port_names=PORT_NAMES[kind], argv=consul_argv, probe=_consul_has_leader,
                ready_log=(r"Started HTTP server: address=\S*:{http}\b",), keeps_data=True,
            ))
    return specs


class Cluster:
    """A running three-member cluster; ``members[i]`` listens on ``CLUSTER_HOSTS[i]``."""

    def __init__(self, kind: str, members: list[ServerHandle]) -> None:
        self.kind = kind
        self.members = members

    def __repr__(self) -> str:
        return f"<Cluster {self.kind} {self.hosts}>"

    @property
    def hosts(self) -> str:
        """``h1:p1,h2:p2,h3:p3``: every member's client endpoint, for a URL."""
        return ",".join(f"{m.host}:{m.port}" for m in self.members)

    def leader(self) -> int | None:
        """The index of the member that leads now (``None`` if none answers as leader)."""
        for index, member in enumerate(self.members):
            if member.running and self._is_leader(member):
                return index
        return None

    def _is_leader(self, member: ServerHandle) -> bool:
        try:
            if self.kind == "zookeeper":
                return "Mode: leader" in _srvr(member.host, member.port)
            if self.kind == "etcd":
                status = _http(f"http://{member.host}:{member.port}/v3/maintenance/status", b"{}")
                assert isinstance(status, dict)
                return bool(status.get("leader")) and status.get("leader") == status.get("header", {}).get("member_id")
            leader = _http(f"http://{member.host}:{member.port}/v1/status/leader")
            return leader == f"{member.host}:{member.ports['server']}"
        except (OSError, ValueError, AssertionError):
            return False

    def close(self) -> None:
        """Stop every member and remove its files."""
        with ThreadPoolExecutor(len(self.members)) as pool:
            list(pool.map(ServerHandle.close, self.members))

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_cluster(kind: str, provider: str, *, artifacts_dir: Path | None = None) -> Cluster:
    """Start a three-member ``kind`` cluster (``process`` or ``container``) and wait until every member serves."""
    if provider not in ("process", "container"):
        raise ServerError(f"a {kind} cluster needs --servers=process or container, not {provider!r}")
    artifacts = Path(artifacts_dir) if artifacts_dir is not None else DEFAULT_ARTIFACTS_DIR
    artifacts.mkdir(parents=True, exist_ok=True)
    plan = [free_ports(PORT_NAMES[kind], UDP_PORTS, host) for host in CLUSTER_HOSTS]
    token = f"discovery-faults-{uuid.uuid4().hex[:8]}"
    try:
        return _start_members(kind, provider, artifacts, plan, token)
    except VersionError as error:
        raise ServerError(str(error)) from error


def _start_members(kind: str, provider: str, artifacts: Path, plan: list[dict[str, int]], token: str) -> Cluster:
    members: list[ServerHandle] = []
    for index, spec in enumerate(_member_specs(kind, plan, token)):
        host, ports = CLUSTER_HOSTS[index], plan[index]
        tag = f"{kind}-cluster-{provider}-{os.getpid()}-{token[-8:]}-n{index + 1}"
        workdir = Path(tempfile.mkdtemp(prefix=f"discovery-{kind}-n{index + 1}-"))
        launch = Launch(host, ports, workdir)
        log_path = artifacts / f"{tag}.log"
        client = ports[spec.client_port]
        busy: Callable[[], bool] = lambda host=host, client=client: port_in_use(host, client)  # noqa: E731
        runner: ProcessRunner | ContainerRunner
        if provider == "process":
            runner = ProcessRunner(spec.argv(launch), log_path, workdir, busy=busy)
        else:
            runner = ContainerRunner(spec.image, spec.argv(launch), f"discovery-test-{tag}", workdir, log_path, None)
        members.append(ServerHandle(spec, provider, host, ports, runner=runner, launch=launch, workdir=workdir,
                                    log_path=log_path))
    cluster = Cluster(kind, members)
    with ThreadPoolExecutor(len(members)) as pool:
        failures = [f for f in pool.map(_start_member, members) if f is not None]
    if failures:
        cluster.close()
        raise ServerError(f"{kind} cluster did not start: {failures[0]}")
    return cluster


def _start_member(member: ServerHandle) -> str | None:
    try:
        member.start()
    except ServerError as error:
        return str(error)
    return None
