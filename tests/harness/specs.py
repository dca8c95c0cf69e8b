"""Per-server facts: the ONE table where ZooKeeper, etcd and Consul differ.

Everything provider-specific that is not in here lives in small runners (process / container) that know
nothing about the servers. A spec describes, for one server kind: the ports it needs, the files and command
line to start it, the log lines that say it is ready, the health probe, the image and the env overrides.
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("zookeeper", "etcd", "consul")

#: The server versions the harness can run, default first. The second ZooKeeper and etcd are Debian trixie's
#: (3.9.3, 3.5.16), unpacked by scripts/fetch-servers.sh into SERVERS_DIR and packed into images by
#: scripts/build-images.sh; Consul 1.8.7 is the only Consul obtainable here. Choose with
#: ``DISCOVERY_TEST_<KIND>_VERSION`` (or pytest's ``--zookeeper-version`` / ``--etcd-version``).
VERSIONS: dict[str, tuple[str, ...]] = {"zookeeper": ("3.8", "3.9"), "etcd": ("3.4", "3.5"), "consul": ("1.8",)}
SERVERS_DIR = Path(os.environ.get("DISCOVERY_SERVERS_DIR", "/opt/discovery-servers"))
#: The jars ZooKeeper 3.9.3's server needs, from trixie's packages. zookeeper.jar comes last: its manifest
#: Class-Path names /usr/share/java (bookworm's 3.8 jute and netty on this machine), and the JVM searches a
#: jar's Class-Path entries right after the jar itself, before the rest of -cp.
ZOOKEEPER_39_JARS = (
    "slf4j-simple.jar", "slf4j-api.jar", "zookeeper-jute.jar", "netty-buffer.jar", "netty-common.jar",
    "netty-handler.jar", "netty-transport.jar", "netty-codec.jar", "netty-resolver.jar",
    "netty-transport-native-epoll.jar", "netty-transport-native-unix-common.jar", "commons-io.jar",
    "commons-cli.jar", "metrics-core.jar", "snappy-java.jar", "zookeeper.jar",
)


class VersionError(RuntimeError):
    """The selected server version is unknown or not installed (the message says how to install it)."""


def server_version(kind: str) -> str:
    """The version of ``kind`` this run uses: ``$DISCOVERY_TEST_<KIND>_VERSION``, else the default."""
    known = VERSIONS[kind]
    chosen = os.environ.get(f"DISCOVERY_TEST_{kind.upper()}_VERSION", "").strip() or known[0]
    if chosen not in known:
        raise VersionError(f"DISCOVERY_TEST_{kind.upper()}_VERSION={chosen!r}: expected one of {known}")
    return chosen


def _installed(path: Path) -> Path:
    if not path.exists():
        raise VersionError(f"{path} is missing: run scripts/fetch-servers.sh (Debian trixie's servers)")
    return path


def etcd_command() -> str:
    """The etcd binary of the selected version (the same path in the local image as on the host)."""
    if server_version("etcd") == "3.4":
        return "etcd"
    return str(_installed(SERVERS_DIR / "etcd-3.5" / "usr" / "bin" / "etcd"))


def zookeeper_classpath() -> str:
    """The server classpath of the selected ZooKeeper version (the same paths in the local image)."""
    if server_version("zookeeper") == "3.8":
        # zookeeper.jar's manifest Class-Path names its dependencies (jute, netty, jetty, slf4j-api, ...).
        return "/usr/share/java/slf4j-simple.jar:/usr/share/java/zookeeper.jar"
    jars = _installed(SERVERS_DIR / "zookeeper-3.9" / "usr" / "share" / "java")
    return ":".join(str(jars / name) for name in ZOOKEEPER_39_JARS)


@dataclass(frozen=True)
class Launch:
    """Where one server instance listens and keeps its files, as seen by the server itself.

    With host networking (process provider, local images) ``listen_host`` is 127.0.0.1 and ``ports`` are the
    free host ports. With published ports (official images) the server listens on 0.0.0.0 on its standard
    in-container ports and Docker publishes them on 127.0.0.1 free ports.
    """

    listen_host: str
    ports: Mapping[str, int]
    workdir: Path  # same absolute path on the host and (bind-mounted) in the container
    official_image: bool = False

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"


@dataclass(frozen=True)
class ServerSpec:
    kind: str
    client_port: str  # name of the port clients use (ServerHandle.port)
    port_names: tuple[str, ...]  # every port; a fresh free 127.0.0.1 port is picked for each
    udp_ports: frozenset[str]  # ports that must also be free for UDP
    standard_ports: Mapping[str, int]  # in-container ports when an official image publishes ports
    files: Callable[[Launch], dict[str, str]]  # config files written into the workdir before each start
    argv: Callable[[Launch], list[str]]
    ready_log: tuple[str, ...]  # regexes (formatted with the listen host/ports) that must all appear
    probe: Callable[[str, int], bool]  # health probe against host/client port
    default_image: str  # the image repository; the tag is the selected version
    keeps_data: bool  # does kill + start keep the data?
    stop_exit_codes: frozenset[int]  # exit codes of a graceful stop (SIGTERM)
    env_prefix: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "env_prefix", f"DISCOVERY_TEST_{self.kind.upper()}")

    @property
    def version(self) -> str:
        """The server version this run uses (see :func:`server_version`)."""
        return server_version(self.kind)

    @property
    def image(self) -> str:
        """``$DISCOVERY_TEST_<KIND>_IMAGE``, else the local image of the selected version."""
        return os.environ.get(f"{self.env_prefix}_IMAGE") or f"{self.default_image}:{self.version}"

    @property
    def url_env(self) -> str:
        return f"{self.env_prefix}_URL"

    def ready_patterns(self, launch: Launch) -> list[re.Pattern[str]]:
        fmt = {"host": re.escape(launch.listen_host), **{k: str(v) for k, v in launch.ports.items()}}
        return [re.compile(p.format(**fmt)) for p in self.ready_log]


# ---------------------------------------------------------------------------------------------- probes


def zk_four_letter_word(host: str, port: int, word: bytes) -> str:
    """ZooKeeper's answer to a four-letter command (``ruok``, ``srvr``...), or "" if it did not answer."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(word)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        return answer.decode(errors="replace")
    except OSError:
        return ""


def _zk_ruok(host: str, port: int) -> bool:
    return zk_four_letter_word(host, port, b"ruok") == "imok"


def _http_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=1.0) as resp:  # loopback http only
        return json.loads(resp.read().decode())


def _etcd_health(host: str, port: int) -> bool:
    try:  # /health answers GET only (HEAD is 405)
        body = _http_json(f"http://{host}:{port}/health")
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and body.get("health") == "true"


def _consul_leader(host: str, port: int) -> bool:
    try:
        body = _http_json(f"http://{host}:{port}/v1/status/leader")
    except (OSError, ValueError):
        return False
    return isinstance(body, str) and body != ""


# ------------------------------------------------------------------------------------------- zookeeper

ZK_TICK_MS = 500  # session timeouts from 2*tick = 1 s up to 60 s are allowed


def _zk_files(launch: Launch) -> dict[str, str]:
    cfg = "\n".join(
        [
            f"tickTime={ZK_TICK_MS}",
            f"minSessionTimeout={2 * ZK_TICK_MS}",
            "maxSessionTimeout=60000",
            "initLimit=10",
            "syncLimit=5",
            f"dataDir={launch.data_dir}",
            f"clientPort={launch.ports['client']}",
            f"clientPortAddress={launch.listen_host}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            "",
        ]
    )
    return {"zoo.cfg": cfg}


def _zk_argv(launch: Launch) -> list[str]:
    if launch.official_image:  # the official image ships zkServer.sh; it reads <dir>/zoo.cfg
        return ["zkServer.sh", "--config", str(launch.workdir), "start-foreground"]
    return [
        "java",
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Dzookeeper.jmx.log4j.disable=true",
        "-cp",
        zookeeper_classpath(),
        "org.apache.zookeeper.server.quorum.QuorumPeerMain",
        str(launch.workdir / "zoo.cfg"),
    ]


# ------------------------------------------------------------------------------------------------ etcd

# etcd 3.4 logs text ("serving insecure client requests on 127.0.0.1:2379"), 3.5 logs JSON
# ({"msg":"serving client traffic insecurely; ...","address":"127.0.0.1:2379"}).
ETCD_SERVING_INSECURE = (
    r'serving (insecure client requests on \S*:{client}\b|client traffic insecurely[^\n]*"address":"\S*:{client}")'
)
ETCD_SERVING_SECURE = (
    r'serving (client requests on \S*:{client}\b|client traffic securely[^\n]*"address":"\S*:{client}")'
)


def _etcd_argv(launch: Launch) -> list[str]:
    h, client, peer = launch.listen_host, launch.ports["client"], launch.ports["peer"]
    adv = "127.0.0.1"
    return [
        etcd_command(),
        "--name=n1",
        f"--data-dir={launch.data_dir}",
        f"--listen-client-urls=http://{h}:{client}",
        f"--advertise-client-urls=http://{adv}:{client}",
        f"--listen-peer-urls=http://{h}:{peer}",
        f"--initial-advertise-peer-urls=http://{adv}:{peer}",
        f"--initial-cluster=n1=http://{adv}:{peer}",
        "--initial-cluster-state=new",
        "--initial-cluster-token=discovery-test",
        # metrics stay on the client listener (no extra --listen-metrics-urls)
    ]


# ---------------------------------------------------------------------------------------------- consul


def _consul_argv(launch: Launch) -> list[str]:
    p = launch.ports
    return [
        "consul",
        "agent",
        "-dev",  # in-memory state: a restart (kill + start) loses every registration and KV entry
        "-node=discovery-test",
        f"-client={launch.listen_host}",
        "-bind=127.0.0.1",
        f"-http-port={p['http']}",
        f"-dns-port={p['dns']}",
        f"-serf-lan-port={p['serf_lan']}",
        f"-serf-wan-port={p['serf_wan']}",
        f"-server-port={p['server']}",
        "-grpc-port=-1",
        "-https-port=-1",
        "-log-level=info",
        # Consul refuses a client IP's 201st HTTP connection by default; here every test, fault trial and
        # benchmark process connects from 127.0.0.1, and a watcher parks one connection per watched service
        # (docs/decisions/consul-connection-pools.md).
        "-hcl=limits { http_max_conns_per_client = 10000 }",
    ]


def _no_files(launch: Launch) -> dict[str, str]:
    return {}


SPECS: dict[str, ServerSpec] = {
    "zookeeper": ServerSpec(
        kind="zookeeper",
        client_port="client",
        port_names=("client",),
        udp_ports=frozenset(),
        standard_ports={"client": 2181},
        files=_zk_files,
        argv=_zk_argv,
        ready_log=(r"binding to port \S*:{client}\b", r"PrepRequestProcessor \(sid:\d+\) started"),
        probe=_zk_ruok,
        default_image="discovery-test/zookeeper",
        keeps_data=True,
        stop_exit_codes=frozenset({0, 143, -15}),  # the JVM exits 128+SIGTERM
    ),
    "etcd": ServerSpec(
        kind="etcd",
        client_port="client",
        port_names=("client", "peer"),
        udp_ports=frozenset(),
        standard_ports={"client": 2379, "peer": 2380},
        files=_no_files,
        argv=_etcd_argv,
        ready_log=(r"ready to serve client requests", ETCD_SERVING_INSECURE),
        probe=_etcd_health,
        default_image="discovery-test/etcd",
        keeps_data=True,
        stop_exit_codes=frozenset({0, 143, -15}),  # etcd re-raises SIGTERM
    ),
    "consul": ServerSpec(
        kind="consul",
        client_port="http",
        port_names=("http", "dns", "serf_lan", "serf_wan", "server"),
        udp_ports=frozenset({"dns", "serf_lan", "serf_wan"}),
        standard_ports={"http": 8500, "dns": 8600, "serf_lan": 8301, "serf_wan": 8302, "server": 8300},
        files=_no_files,
        argv=_consul_argv,
        ready_log=(r"Started HTTP server: address=\S*:{http}\b", r"Synced node info"),
        probe=_consul_leader,
        default_image="discovery-test/consul",
        keeps_data=False,
        stop_exit_codes=frozenset({0, 1, -15}),  # consul exits 1 on SIGTERM
    ),
}
