"""Real ZooKeeper / etcd / Consul servers with TLS and access control, for tests/security.

Certificates are made at run time with the ``openssl`` command line (the ``cryptography`` package is not a
dependency of this project) into the server's private temporary workdir, which ``ServerHandle.close()``
deletes: nothing secret is ever written into the repository.

Each server follows the ``--servers`` choice (process or container; ``external`` cannot be configured
for TLS, so it is refused). Both runners get the same command line: the workdir is bind-mounted at the same
path in the container and the local images use host networking, so certificates, config files and the
ports are the same either way. Set-up that needs a client (etcd users/roles, Consul ACL policies and
tokens) runs on the host against the server's 127.0.0.1 port.

* ZooKeeper 3.8: Netty connection factory, a plain ``clientPort`` (the readiness probe and the "other
  client" of the ACL tests) and a ``secureClientPort`` with PEM key/trust stores and ``ssl.clientAuth=need``.
  Debian's zookeeper.jar manifest omits netty-codec and netty-resolver, which the secure port needs, so
  those two jars are copied into the workdir and put on the class path.
* etcd 3.4: HTTPS client URL with ``--client-cert-auth``; auth enabled with a root user, a role that may
  read/write only :data:`ETCD_PREFIX` and a user holding it, and a second user whose role owns another prefix.
* Consul 1.8 (``agent -dev``): HTTPS only (plain HTTP off), client certificates required, ACLs on with
  ``default_policy=deny``; a token whose policy allows only services named ``sec-*`` (plus the reads the
  backend needs), and a second token for services named ``other-*``.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .servers import (
    HOST,
    ContainerRunner,
    ProcessRunner,
    ServerError,
    ServerHandle,
    _Runner,
    _use_published_ports,
    free_ports,
    port_in_use,
)
from .specs import ETCD_SERVING_SECURE, SPECS, ZK_TICK_MS, Launch, ServerSpec, VersionError, etcd_command

ETCD_PREFIX = "/sec"
ETCD_OTHER_PREFIX = "/other"
CONSUL_SERVICE_PREFIX = "sec-"
CONSUL_OTHER_SERVICE_PREFIX = "other-"
CONSUL_KV_PREFIX = "discovery/_definitions/"  # + the scope: Consul definitions live in KV

_OPENSSL_DAYS = "2"


# ------------------------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Certificates:
    """PEM files of one test PKI: our CA, a server and a client certificate it signed, and a rogue CA.

    ``rogue_cert``/``rogue_key`` is a client certificate signed by ``rogue_ca``, which no server trusts; a
    client that uses ``rogue_ca`` as its CA trusts no server.
    """

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    server_bundle: Path  # key + certificate in one file (ZooKeeper's PEM key store)
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ServerError("the openssl command is needed to make test certificates (apt-get install openssl)")
    done = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServerError(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()}")


def _new_key_and_request(cwd: Path, name: str, subject: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd,
    )


def _self_signed_ca(cwd: Path, name: str, subject: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", _OPENSSL_DAYS, "-subj", subject,
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=cwd,
    )


def _sign(cwd: Path, name: str, ca: str, extensions: str) -> None:
    (cwd / f"{name}.ext").write_text(extensions, encoding="utf-8")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-set_serial",
        str(uuid.uuid4().int >> 64), "-out", f"{name}.pem", "-days", _OPENSSL_DAYS, "-extfile", f"{name}.ext",
        cwd=cwd,
    )


def make_certificates(directory: Path) -> Certificates:
    """Create a fresh test PKI in ``directory`` (server certificate valid for 127.0.0.1 and localhost)."""
    directory.mkdir(parents=True, exist_ok=True)
    _self_signed_ca(directory, "ca", "/CN=discovery-test-ca")
    _self_signed_ca(directory, "rogue-ca", "/CN=rogue-ca")
    _new_key_and_request(directory, "server", "/CN=localhost")
    _sign(
        directory, "server", "ca",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    _new_key_and_request(directory, "client", "/CN=discovery-client")
    _sign(directory, "client", "ca", "extendedKeyUsage=clientAuth\n")
    _new_key_and_request(directory, "rogue", "/CN=rogue-client")
    _sign(directory, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    bundle = directory / "server-bundle.pem"
    bundle.write_text(
        (directory / "server.key").read_text(encoding="ascii") + (directory / "server.pem").read_text(encoding="ascii"),
        encoding="ascii",
    )
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return Certificates(
        directory=directory,
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        server_bundle=bundle,
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        rogue_ca=directory / "rogue-ca.pem",
        rogue_cert=directory / "rogue.pem",
        rogue_key=directory / "rogue.key",
    )


def client_ssl_context(certs: Certificates) -> ssl.SSLContext:
    """An SSL context that trusts our CA and presents the client certificate (for probes and set-up)."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


def _https_json(host: str, port: int, path: str, certs: Certificates) -> object:
    """The JSON body of a loopback https GET trusting only our CA; None when the server does not answer (yet)."""
    try:
        with urllib.request.urlopen(f"https://{host}:{port}{path}", timeout=1.0,
                                    context=client_ssl_context(certs)) as response:
            return json.loads(response.read().decode())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ servers


@dataclass
class SecureServer:
    """A running TLS/auth-enabled server and what a test needs to talk to it.

    ``base_url`` is the discovery URL without a path or parameters (``zookeeper://127.0.0.1:<secure port>``,
    ``etcd://127.0.0.1:<port>``, ``consul://127.0.0.1:<https port>``). ``credentials`` holds the secrets
    the harness created (user names, passwords, tokens) by role name.
    """

    kind: str
    handle: ServerHandle
    certs: Certificates
    base_url: str
    credentials: dict[str, str] = field(default_factory=dict)
    plain_port: int | None = None  # ZooKeeper only: the non-TLS client port

    @property
    def port(self) -> int:
        """The TLS client port."""
        return int(self.base_url.rsplit(":", 1)[1])

    def tls_query(self, *, cert: bool = True) -> str:
        """``tls=true&ca=...[&cert=...&key=...]`` for this server's PKI."""
        query = f"tls=true&ca={self.certs.ca}"
        if cert:
            query += f"&cert={self.certs.client_cert}&key={self.certs.client_key}"
        return query

    def close(self) -> None:
        """Stop the server and delete its workdir (certificates included)."""
        self.handle.close()


def _zookeeper_spec(certs: Certificates, jars: list[Path]) -> ServerSpec:
    base = SPECS["zookeeper"]

    def files(launch: Launch) -> dict[str, str]:
        lines = [
            f"tickTime={ZK_TICK_MS}",
            f"minSessionTimeout={2 * ZK_TICK_MS}",
            "maxSessionTimeout=60000",
            f"dataDir={launch.data_dir}",
            f"clientPort={launch.ports['client']}",
            f"clientPortAddress={launch.listen_host}",
            f"secureClientPort={launch.ports['secure']}",
            f"secureClientPortAddress={launch.listen_host}",
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
            f"ssl.keyStore.location={certs.server_bundle}",
            "ssl.keyStore.type=PEM",
            f"ssl.trustStore.location={certs.ca}",
            "ssl.trustStore.type=PEM",
            "ssl.clientAuth=need",
            "authProvider.1=org.apache.zookeeper.server.auth.DigestAuthenticationProvider",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            "",
        ]
        return {"zoo.cfg": "\n".join(lines)}

    def argv(launch: Launch) -> list[str]:
        command = base.argv(launch)
        class_path = command.index("-cp") + 1
        command[class_path] += "".join(f":{jar}" for jar in jars)
        return command

    return ServerSpec(
        kind="zookeeper",
        client_port="client",
        port_names=("client", "secure"),
        udp_ports=frozenset(),
        standard_ports={},
        files=files,
        argv=argv,
        ready_log=(
            r"binding to port \S*:{client}\b",
            r"binding to port \S*:{secure}\b",
            r"PrepRequestProcessor \(sid:\d+\) started",
        ),
        probe=base.probe,
        default_image=base.default_image,
        keeps_data=True,
        stop_exit_codes=base.stop_exit_codes,
    )


def _etcd_spec(certs: Certificates) -> ServerSpec:
    base = SPECS["etcd"]

    def argv(launch: Launch) -> list[str]:
        h, client, peer = launch.listen_host, launch.ports["client"], launch.ports["peer"]
        return [
            etcd_command(),
            "--name=n1",
            f"--data-dir={launch.data_dir}",
            f"--listen-client-urls=https://{h}:{client}",
            f"--advertise-client-urls=https://127.0.0.1:{client}",
            f"--listen-peer-urls=http://{h}:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=n1=http://127.0.0.1:{peer}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=discovery-secure-test",
            f"--cert-file={certs.server_cert}",
            f"--key-file={certs.server_key}",
            f"--trusted-ca-file={certs.ca}",
            "--client-cert-auth",
        ]

    def probe(host: str, port: int) -> bool:
        body = _https_json(host, port, "/health", certs)
        return isinstance(body, dict) and body.get("health") == "true"

    return ServerSpec(
        kind="etcd",
        client_port="client",
        port_names=("client", "peer"),
        udp_ports=frozenset(),
        standard_ports={},
        files=base.files,
        argv=argv,
        ready_log=(r"ready to serve client requests", ETCD_SERVING_SECURE),
        probe=probe,
        default_image=base.default_image,
        keeps_data=True,
        stop_exit_codes=base.stop_exit_codes,
    )


def _consul_spec(certs: Certificates, master_token: str) -> ServerSpec:
    base = SPECS["consul"]

    def files(launch: Launch) -> dict[str, str]:
        config = {
            "acl": {
                "enabled": True,
                "default_policy": "deny",
                "enable_token_persistence": False,
                "tokens": {"master": master_token, "agent": master_token},
            },
            "cert_file": str(certs.server_cert),
            "key_file": str(certs.server_key),
            "ca_file": str(certs.ca),
            "verify_incoming": False,
            "verify_incoming_rpc": False,
            "verify_incoming_https": True,
            "verify_outgoing": False,
        }
        return {"secure.json": json.dumps(config, indent=2)}

    def argv(launch: Launch) -> list[str]:
        p = launch.ports
        return [
            "consul",
            "agent",
            "-dev",
            "-node=discovery-secure-test",
            f"-client={launch.listen_host}",
            "-bind=127.0.0.1",
            "-http-port=-1",
            f"-https-port={p['https']}",
            f"-dns-port={p['dns']}",
            f"-serf-lan-port={p['serf_lan']}",
            f"-serf-wan-port={p['serf_wan']}",
            f"-server-port={p['server']}",
            "-grpc-port=-1",
            f"-config-file={launch.workdir / 'secure.json'}",
            "-log-level=info",
        ]

    def probe(host: str, port: int) -> bool:
        body = _https_json(host, port, "/v1/status/leader", certs)
        return isinstance(body, str) and body != ""

    return ServerSpec(
        kind="consul",
        client_port="https",
        port_names=("https", "dns", "serf_lan", "serf_wan", "server"),
        udp_ports=frozenset({"dns", "serf_lan", "serf_wan"}),
        standard_ports={},
        files=files,
        argv=argv,
        ready_log=(r"Started HTTPS server: address=\S*:{https}\b", r"Synced node info"),
        probe=probe,
        default_image=base.default_image,
        keeps_data=False,
        stop_exit_codes=base.stop_exit_codes,
    )


def _launch(spec: ServerSpec, provider: str, workdir: Path, artifacts: Path) -> ServerHandle:
    """Start ``spec`` with the process or container runner (host networking either way)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    ports = free_ports(spec.port_names, spec.udp_ports)
    launch = Launch(HOST, ports, workdir)
    tag = f"{spec.kind}-secure-{provider}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    log_path = artifacts / f"{tag}.log"
    try:
        argv = spec.argv(launch)
    except VersionError as error:
        raise ServerError(str(error)) from error
    runner: _Runner
    if provider == "process":
        client_port = ports[spec.client_port]
        runner = ProcessRunner(argv, log_path, workdir, busy=lambda: port_in_use(HOST, client_port))
    elif provider == "container":
        if _use_published_ports(spec.image):
            raise ServerError("secure test servers need the local images with host networking (build-images.sh)")
        runner = ContainerRunner(spec.image, argv, f"discovery-test-{tag}", workdir, log_path, None)
    else:
        raise ServerError(f"secure test servers cannot use --servers={provider} (TLS and ACLs are set up per run)")
    handle = ServerHandle(spec, provider, HOST, ports, runner=runner, launch=launch, workdir=workdir, log_path=log_path)
    try:
        handle.start()
    except BaseException:
        handle.close()
        raise
    return handle


def _new_workdir(kind: str) -> tuple[Path, Certificates]:
    workdir = Path(tempfile.mkdtemp(prefix=f"discovery-secure-{kind}-"))
    try:
        return workdir, make_certificates(workdir / "pki")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def start_secure_zookeeper(provider: str, artifacts: Path) -> SecureServer:
    """ZooKeeper with a TLS ``secureClientPort`` (client certificates required) and digest auth."""
    workdir, certs = _new_workdir("zookeeper")
    jars = []
    for name in ("netty-codec.jar", "netty-resolver.jar"):
        source = Path("/usr/share/java") / name
        if not source.exists():
            shutil.rmtree(workdir, ignore_errors=True)
            raise ServerError(f"{source} is missing: ZooKeeper's secure port needs it (apt-get install libnetty-java)")
        jars.append(Path(shutil.copy(source, workdir / name)))
    handle = _launch(_zookeeper_spec(certs, jars), provider, workdir, artifacts)
    return SecureServer(
        "zookeeper", handle, certs, f"zookeeper://{HOST}:{handle.ports['secure']}", plain_port=handle.ports["client"]
    )


def _etcdctl(server: ServerHandle, certs: Certificates, *args: str, user: str | None = None) -> str:
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        raise ServerError("etcdctl is needed to set up etcd auth (apt-get install etcd-client)")
    command = [
        etcdctl, f"--endpoints=https://{HOST}:{server.port}", f"--cacert={certs.ca}",
        f"--cert={certs.client_cert}", f"--key={certs.client_key}", "--dial-timeout=5s", "--command-timeout=10s",
    ]
    if user is not None:
        command.append(f"--user={user}")
    done = subprocess.run(
        [*command, *args], capture_output=True, text=True, check=False, env={**os.environ, "ETCDCTL_API": "3"}
    )
    if done.returncode != 0:
        raise ServerError(f"etcdctl {args[0]} {args[1] if len(args) > 1 else ''} failed: {done.stderr.strip()}")
    return done.stdout


def start_secure_etcd(provider: str, artifacts: Path) -> SecureServer:
    """etcd with HTTPS + client certificates and auth: ``app`` may use only /sec/, ``other`` only /other/."""
    workdir, certs = _new_workdir("etcd")
    handle = _launch(_etcd_spec(certs), provider, workdir, artifacts)
    credentials = {
        "root_password": uuid.uuid4().hex,
        "app_user": "app",
        "app_password": f"app-{uuid.uuid4().hex}",
        "other_user": "other",
        "other_password": f"other-{uuid.uuid4().hex}",
    }
    try:
        _etcdctl(handle, certs, "user", "add", f"root:{credentials['root_password']}")
        _etcdctl(handle, certs, "auth", "enable")
        root = f"root:{credentials['root_password']}"
        for role, prefix in (("app", ETCD_PREFIX), ("other", ETCD_OTHER_PREFIX)):
            _etcdctl(handle, certs, "role", "add", role, user=root)
            _etcdctl(handle, certs, "role", "grant-permission", role, "--prefix=true", "readwrite", f"{prefix}/",
                     user=root)
            _etcdctl(handle, certs, "user", "add", f"{role}:{credentials[role + '_password']}", user=root)
            _etcdctl(handle, certs, "user", "grant-role", role, role, user=root)
    except BaseException:
        handle.close()
        raise
    return SecureServer("etcd", handle, certs, f"etcd://{HOST}:{handle.port}", credentials)


def _consul_api(server: ServerHandle, certs: Certificates, token: str, method: str, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        f"https://{HOST}:{server.port}{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers={"X-Consul-Token": token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10, context=client_ssl_context(certs)) as response:
        return json.loads(response.read().decode())


def _consul_policy(service_prefix: str) -> str:
    # Reads the backend needs (agent self, node and catalog reads); writes only to its own services and KV.
    return "\n".join(
        [
            f'service_prefix "{service_prefix}" {{ policy = "write" }}',
            'node_prefix "" { policy = "read" }',
            'agent_prefix "" { policy = "read" }',
            f'key_prefix "{CONSUL_KV_PREFIX}{service_prefix}" {{ policy = "write" }}',
        ]
    )


def start_secure_consul(provider: str, artifacts: Path) -> SecureServer:
    """Consul, HTTPS only with client certificates, ACLs default-deny; tokens for ``sec-*`` and ``other-*``."""
    workdir, certs = _new_workdir("consul")
    master = str(uuid.uuid4())
    handle = _launch(_consul_spec(certs, master), provider, workdir, artifacts)
    credentials = {"master_token": master}
    try:
        for role, prefix in (("app", CONSUL_SERVICE_PREFIX), ("other", CONSUL_OTHER_SERVICE_PREFIX)):
            rules = {"Name": f"{role}-policy", "Rules": _consul_policy(prefix)}
            policy = _consul_api(handle, certs, master, "PUT", "/v1/acl/policy", rules)
            token = _consul_api(
                handle, certs, master, "PUT", "/v1/acl/token",
                {"Description": f"{role} token", "Policies": [{"ID": policy["ID"]}]},
            )
            credentials[f"{role}_token"] = str(token["SecretID"])
    except BaseException:
        handle.close()
        raise
    return SecureServer("consul", handle, certs, f"consul://{HOST}:{handle.port}", credentials)


STARTERS = {
    "zookeeper": start_secure_zookeeper,
    "etcd": start_secure_etcd,
    "consul": start_secure_consul,
}
