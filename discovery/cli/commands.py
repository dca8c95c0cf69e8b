"""The ``discovery`` command's subcommands (click + rich). :func:`discovery.cli.main` is the entry point; it
imports this module only after checking that the ``[cli]`` extra is installed.

Exit codes: 0 success, 1 not found, 2 bad input or configuration (the message names the field), 3 the backend
is unreachable, 4 the backend lacks a capability (e.g. it cannot store Services), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from discovery.core.errors import BackendUnavailableError, DiscoveryError, UnsupportedOperationError
from discovery.core.models import Instance, Snapshot, Status
from discovery.core.urls import redact_url
from discovery.registry.async_registry import AsyncRegistry
from discovery.registry.blocking import Registry
from discovery.services import (
    AllocationRanges,
    Endpoints,
    LoadedService,
    Service,
    ServiceCatalog,
    ServiceStore,
    parse_manifests,
    read_endpoints,
)

T = TypeVar("T")

EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_UNSUPPORTED = 4

def _console(stream: TextIO) -> Console:
    # Markup off: names and messages such as "spec.ports[0]" print as they are. Into a pipe or file: no width
    # limit (rich would truncate cells at 80 columns) and no box drawing, so scripts can read the columns.
    terminal = stream.isatty()
    return Console(file=stream, highlight=False, markup=False, soft_wrap=True, width=None if terminal else 4096)


def out() -> Console:
    """A console on the current stdout (looked up per call: tests and wrappers replace ``sys.stdout``)."""
    return _console(sys.stdout)


def err() -> Console:
    """A console on the current stderr."""
    return _console(sys.stderr)


def new_table(*headers: str, title: str | None = None) -> Table:
    """A table with rich borders on a terminal, plain aligned columns otherwise."""
    table = Table(title=title, title_justify="left", box=box.HEAVY_HEAD if sys.stdout.isatty() else None,
                  pad_edge=False)
    for header in headers:
        table.add_column(header)
    return table


class NotFound(DiscoveryError):
    """A named Service does not exist."""


def exit_code(error: DiscoveryError) -> int:
    """The exit code for a library error."""
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, BackendUnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(error, UnsupportedOperationError):
        return EXIT_UNSUPPORTED
    return EXIT_BAD_INPUT


class Settings:
    """Options of the top-level group, passed to every subcommand."""

    def __init__(self, url: str | None) -> None:
        self.url = url

    def run(self, work: Callable[[AsyncRegistry], Coroutine[Any, Any, T]], *, quiet: bool = False) -> T:
        """Connect (with a spinner on a terminal), run ``work(registry)``, close."""

        async def session() -> T:
            with _status(f"connecting to {redact_url(self.url)}", quiet):  # the URL may hold a password
                registry = await AsyncRegistry.connect(self.url)
            try:
                return await work(registry)
            finally:
                await registry.close()

        return asyncio.run(session())


@contextlib.contextmanager
def _status(text: str, quiet: bool = False) -> Iterator[None]:
    if quiet or not err().is_terminal:
        yield
        return
    with err().status(text):
        yield


def _ranges(cluster_ip_range: str | None, node_port_range: str | None) -> AllocationRanges:
    return AllocationRanges.from_text(cluster_ip_range, node_port_range)


namespace_option = click.option("-n", "--namespace", default="default", show_default=True, help="namespace")
all_namespaces_option = click.option("-A", "--all-namespaces", is_flag=True, help="every namespace")
range_options = [
    click.option("--cluster-ip-range", default=None, metavar="CIDR",
                 help="ClusterIP range (default $DISCOVERY_CLUSTER_IP_RANGE or 127.10.0.0/16)"),
    click.option("--node-port-range", default=None, metavar="FIRST-LAST",
                 help="node port range (default $DISCOVERY_NODE_PORT_RANGE or 30000-32767)"),
]


def with_ranges(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add the allocation range options."""
    for option in reversed(range_options):
        function = option(function)
    return function


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="DISCOVERY_URL", default=None, show_envvar=True,
              help="backend URL: memory://, zookeeper://h:2181/root, etcd://h:2379/prefix, consul://h:8500/scope")
@click.option("-v", "--verbose", count=True, help="log more (-v info, -vv debug)")
@click.pass_context
def cli(context: click.Context, url: str | None, verbose: int) -> None:
    """Service discovery over ZooKeeper, etcd, Consul (or in memory), with Kubernetes-style Services."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # kazoo logs every failed connection attempt; our own error says what matters
    logging.getLogger("kazoo").setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)
    context.obj = Settings(url)


# -- instances -----------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--ttl", type=float, default=2.0, show_default=True, help="TTL of the demo registrations (seconds)")
@click.pass_obj
def demo(settings: Settings, ttl: float) -> None:
    """Register, watch, kill, drain and pick, printed as tables."""
    from discovery.cli.demo import run_demo

    run_demo(settings.url, ttl)


@cli.command()
@namespace_option
@click.pass_obj
def services(settings: Settings, namespace: str) -> None:
    """Names of the registry services that have instances."""

    async def work(registry: AsyncRegistry) -> None:
        for name in await registry.services(namespace):
            out().print(name)

    settings.run(work, quiet=True)


def instance_table(instances: Sequence[Instance], title: str | None = None) -> Table:
    """A rich table of instances."""
    table = new_table("ID", "SERVICE", "ADDRESS", "PORTS", "STATUS", "ZONE", "WEIGHT", "LABELS", title=title)
    for i in instances:
        ports = ",".join(f"{k}={v}" for k, v in i.ports.items()) or "-"
        labels = ",".join(f"{k}={v}" for k, v in i.labels.items()) or "-"
        table.add_row(i.id, i.service, f"{i.address}:{i.port}", ports, i.status.value, i.zone or "-",
                      str(i.weight), labels)
    return table


def _list_instances(settings: Settings, service: str, namespace: str, selector: str | None, every: bool) -> None:
    async def work(registry: AsyncRegistry) -> None:
        statuses = None if every else (Status.UP,)
        found = await registry.instances(service, namespace, selector=selector, statuses=statuses)
        out().print(instance_table(found))

    settings.run(work, quiet=True)


@cli.command(name="list")
@click.argument("service")
@namespace_option
@click.option("-l", "--selector", default=None, help="label selector, e.g. 'app=web,tier!=db'")
@click.option("--all", "every", is_flag=True, help="every status, not only UP")
@click.pass_obj
def list_command(settings: Settings, service: str, namespace: str, selector: str | None, every: bool) -> None:
    """Instances of a registry service."""
    _list_instances(settings, service, namespace, selector, every)


def snapshot_table(snapshot: Snapshot) -> Table:
    """A titled table of a snapshot."""
    title = f"{snapshot.service}.{snapshot.namespace}  revision {snapshot.revision}"
    if snapshot.stale:
        title += "  (STALE: backend unreachable, last known set)"
    return instance_table(snapshot.instances, title)


@cli.command()
@click.argument("service")
@namespace_option
@click.pass_obj
def watch(settings: Settings, service: str, namespace: str) -> None:
    """Follow a registry service: a live table on a terminal, one table per change otherwise."""
    with Registry.connect(settings.url) as registry, registry.watch(service, namespace) as snapshots:
        if out().is_terminal:
            with Live(console=out(), auto_refresh=False) as live:
                for snapshot in snapshots:
                    live.update(snapshot_table(snapshot), refresh=True)
        else:
            for snapshot in snapshots:
                out().print(snapshot_table(snapshot))


def _pairs(option: str, items: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint=option)
        pairs[key] = value
    return pairs


@cli.command()
@click.argument("service")
@click.argument("instance_id", metavar="ID")
@click.argument("address")
@click.argument("port", type=int)
@namespace_option
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="a label (repeatable)")
@click.option("--port-name", "named_ports", multiple=True, metavar="NAME=PORT",
              help="a named port, for a Service targetPort by name (repeatable)")
@click.option("--ttl", type=float, default=None, help="liveness TTL in seconds (default: the backend's)")
@click.pass_obj
def register(settings: Settings, service: str, instance_id: str, address: str, port: int, namespace: str,
             labels: Sequence[str], named_ports: Sequence[str], ttl: float | None) -> None:
    """Register an instance and keep it registered until Ctrl-C."""
    try:
        ports = {name: int(number) for name, number in _pairs("--port-name", named_ports).items()}
    except ValueError:
        raise click.BadParameter("the port must be a number", param_hint="--port-name") from None
    instance = Instance(service, instance_id, address, port, namespace=namespace,
                        labels=_pairs("--label", labels), ports=ports)
    with Registry.connect(settings.url) as registry:
        registration = registry.register(instance, ttl=ttl)
        out().print(f"registered {namespace}/{service}/{instance_id} at {address}:{port} "
                  f"(ttl {registration.ttl:g}s); Ctrl-C deregisters")
        _wait_for_interrupt()
        registration.deregister()
        out().print("deregistered")


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- Services ------------------------------------------------------------------------------------------------------


def _read_manifests(files: Sequence[str], namespace: str | None) -> list[LoadedService]:
    loaded: list[LoadedService] = []
    for name in files:
        if name == "-":
            text = sys.stdin.read()
        else:
            try:
                text = Path(name).read_text()
            except OSError as error:
                raise click.BadParameter(f"cannot read {name}: {error.strerror}", param_hint="-f") from None
        loaded.extend(parse_manifests(text, default_namespace=namespace or "default", source=name))
    return loaded


@cli.command()
@click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE",
              help="manifest file (YAML, several documents allowed; '-' = stdin; repeatable)")
@click.option("-n", "--namespace", default=None, help="namespace for manifests that name none (default: default)")
@with_ranges
@click.pass_obj
def apply(settings: Settings, files: Sequence[str], namespace: str | None, cluster_ip_range: str | None,
          node_port_range: str | None) -> None:
    """Create or update Services from manifests (apiVersion: v1, kind: Service)."""
    loaded = _read_manifests(files, namespace)  # every document is checked before anything is written
    ranges = _ranges(cluster_ip_range, node_port_range)

    async def work(registry: AsyncRegistry) -> None:
        store = ServiceStore(registry.backend, ranges)
        for item in loaded:
            for warning in item.warnings:
                err().print(f"warning: {item.source}: {warning}")
        for result in await store.apply_all([item.service for item in loaded]):  # all checked, then written
            out().print(f"service/{result.service.name} {result.action.value}")

    settings.run(work)


def service_table(services: Sequence[Service]) -> Table:
    """``kubectl get services``-like columns."""
    table = new_table("NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "SELECTOR")
    for service in services:
        external = [service.load_balancer_ip] if service.load_balancer_ip else []
        external += list(service.external_ips)
        if service.external_name:
            external = [service.external_name]
        ports = ",".join(
            f"{p.port}:{p.node_port}/{p.protocol}" if p.node_port else f"{p.port}/{p.protocol}" for p in service.ports
        )
        selector = ",".join(f"{k}={v}" for k, v in service.selector.items())
        table.add_row(service.namespace, service.name, service.type.value, service.cluster_ip or "-",
                      ",".join(external) or "<none>", ports or "<none>", selector or "<none>")
    return table


def endpoints_table(all_endpoints: Sequence[Endpoints]) -> Table:
    """One row per Service port: its endpoints as ``address:port`` list."""
    table = new_table("NAMESPACE", "NAME", "PORT", "ENDPOINTS")
    for endpoints in all_endpoints:
        for entry in endpoints.ports:
            targets = ",".join(f"{e.address}:{e.port}" for e in entry.endpoints) or "<none>"
            table.add_row(endpoints.namespace, endpoints.name, entry.port.label, targets)
    return table


async def _services_named(store: ServiceStore, name: str | None, namespace: str, every: bool) -> list[Service]:
    if name is not None:
        found = await store.get(name, namespace)
        if found is None:
            raise NotFound(f'service "{name}" not found in namespace "{namespace}"')
        return [found]
    return list(await store.list(None if every else namespace))


@cli.group()
def get() -> None:
    """Show services, endpoints or instances."""


@get.command(name="services")
@click.argument("name", required=False)
@namespace_option
@all_namespaces_option
@click.pass_obj
def get_services(settings: Settings, name: str | None, namespace: str, all_namespaces: bool) -> None:
    """Services (one, a namespace's, or all with -A)."""

    async def work(registry: AsyncRegistry) -> None:
        out().print(service_table(await _services_named(ServiceStore(registry.backend), name, namespace,
                                                      all_namespaces)))

    settings.run(work, quiet=True)


@get.command(name="endpoints")
@click.argument("name", required=False)
@namespace_option
@all_namespaces_option
@click.pass_obj
def get_endpoints(settings: Settings, name: str | None, namespace: str, all_namespaces: bool) -> None:
    """Endpoints of Services: UP instances matching the selector, target ports resolved."""

    async def work(registry: AsyncRegistry) -> None:
        chosen = await _services_named(ServiceStore(registry.backend), name, namespace, all_namespaces)
        out().print(endpoints_table([await read_endpoints(registry, service) for service in chosen]))

    settings.run(work, quiet=True)


@get.command(name="instances")
@click.argument("service")
@namespace_option
@click.option("-l", "--selector", default=None, help="label selector")
@click.option("--all", "every", is_flag=True, help="every status, not only UP")
@click.pass_obj
def get_instances(settings: Settings, service: str, namespace: str, selector: str | None, every: bool) -> None:
    """Instances of a registry service (same as ``list``)."""
    _list_instances(settings, service, namespace, selector, every)


@cli.group()
def describe() -> None:
    """Show one object in detail."""


@describe.command(name="service")
@click.argument("name")
@namespace_option
@click.pass_obj
def describe_service(settings: Settings, name: str, namespace: str) -> None:
    """A Service, its DNS names and its endpoints."""

    async def work(registry: AsyncRegistry) -> None:
        [service] = await _services_named(ServiceStore(registry.backend), name, namespace, False)
        endpoints = await read_endpoints(registry, service)
        rows: list[tuple[str, str]] = [
            ("Name", service.name),
            ("Namespace", service.namespace),
            ("Labels", ",".join(f"{k}={v}" for k, v in service.labels.items()) or "<none>"),
            ("Selector", ",".join(f"{k}={v}" for k, v in service.selector.items()) or "<none>"),
            ("Type", service.type.value),
            ("IP", service.cluster_ip or "<none>"),
            ("DNS", service.dns_name()),
        ]
        if service.load_balancer_ip:
            rows.append(("LoadBalancer IP", service.load_balancer_ip))
        if service.external_ips:
            rows.append(("External IPs", ",".join(service.external_ips)))
        if service.external_name:
            rows.append(("External Name", service.external_name))
        for entry in endpoints.ports:
            port = entry.port
            rows.append(("Port", f"{port.name or '<unset>'}  {port.port}/{port.protocol}"))
            rows.append(("TargetPort", f"{port.target_port}/{port.protocol}"))
            if port.node_port is not None:
                rows.append(("NodePort", f"{port.name or '<unset>'}  {port.node_port}/{port.protocol}"))
            rows.append(("Endpoints", ",".join(f"{e.address}:{e.port}" for e in entry.endpoints) or "<none>"))
            rows.append(("SRV", f"_{port.label}._tcp.{service.dns_name()}"))
        table = Table(show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            table.add_row(f"{key}:", value)
        out().print(table)

    settings.run(work, quiet=True)


@cli.command()
@click.argument("what", required=False, type=click.Choice(["service", "services", "svc"]))
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", "files", multiple=True, metavar="FILE", help="delete the Services of a manifest")
@namespace_option
@click.pass_obj
def delete(settings: Settings, what: str | None, names: Sequence[str], files: Sequence[str], namespace: str) -> None:
    """Delete Services by name (``delete service NAME...``) or by manifest (``delete -f FILE``)."""
    keys = [(namespace, name) for name in names]
    keys += [item.service.key for item in _read_manifests(files, namespace)] if files else []
    if not keys:
        raise click.UsageError("name a Service (delete service NAME) or a manifest (delete -f FILE)")

    async def work(registry: AsyncRegistry) -> None:
        store = ServiceStore(registry.backend)
        missing = []
        for ns, name in keys:
            if await store.delete(name, ns):
                out().print(f'service "{name}" deleted')
            else:
                missing.append(f'service "{name}" not found in namespace "{ns}"')
        if missing:
            raise NotFound("; ".join(missing))

    settings.run(work)


# -- servers -------------------------------------------------------------------------------------------------------


def _serve(settings: Settings, namespace: str | None, rescan: float,
           serve: Callable[[ServiceCatalog], Awaitable[Callable[[], Awaitable[None]]]]) -> None:
    """Run a catalog and a server on it until Ctrl-C or SIGTERM."""

    async def work(registry: AsyncRegistry) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        catalog = ServiceCatalog(registry, ServiceStore(registry.backend), namespace=namespace,
                                 rescan_interval=rescan)
        with _status("reading Service definitions"):
            await catalog.start()
        try:
            close = await serve(catalog)
            try:
                await stop.wait()
            finally:
                await close()
        finally:
            await catalog.close()
        out().print("stopped")

    settings.run(work)


@cli.command()
@click.option("-n", "--namespace", default=None, help="serve only this namespace (default: every namespace)")
@click.option("--node-address", default="127.0.0.1", show_default=True,
              help="address the node ports listen on (0.0.0.0 for every interface)")
@click.option("--rescan-interval", type=float, default=2.0, show_default=True,
              help="seconds between re-reads of a namespace's service names")
@click.pass_obj
def proxy(settings: Settings, namespace: str | None, node_address: str, rescan_interval: float) -> None:
    """Serve Services as an L4 TCP proxy (ClusterIP, node ports, local load-balancer / external IPs)."""
    from discovery.services.proxy import ServiceProxy

    # Listener changes are the proxy's news: show them without -v.
    logging.getLogger("discovery.services.proxy").setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))

    async def serve(catalog: ServiceCatalog) -> Callable[[], Awaitable[None]]:
        server = ServiceProxy(catalog, node_address=node_address)
        await server.start()
        table = new_table("ADDRESS", "SERVICE", "PORT", "KIND", title="listening")
        for spec in server.listeners:
            table.add_row(f"{spec.address}:{spec.port}", f"{spec.namespace}/{spec.service}", spec.service_port,
                          spec.kind.value)
        out().print(table)
        out().print("proxy ready; Ctrl-C stops")
        return server.close

    _serve(settings, namespace, rescan_interval, serve)


@cli.command(name="dns")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=int, default=5353, show_default=True, help="UDP and TCP port (0 = any free port)")
@click.option("--domain", default="cluster.local", show_default=True, help="the zone served")
@click.option("--ttl", type=int, default=5, show_default=True, help="TTL of the answers (seconds)")
@click.option("-n", "--namespace", default=None, help="serve only this namespace (default: every namespace)")
@click.option("--rescan-interval", type=float, default=2.0, show_default=True,
              help="seconds between re-reads of a namespace's service names")
@click.pass_obj
def dns_command(settings: Settings, host: str, port: int, domain: str, ttl: int, namespace: str | None,
                rescan_interval: float) -> None:
    """Answer <svc>.<ns>.svc.cluster.local (A, SRV, CNAME) over UDP and TCP."""
    from discovery.services.dns import DnsServer

    async def serve(catalog: ServiceCatalog) -> Callable[[], Awaitable[None]]:
        server = DnsServer(catalog, host=host, port=port, domain=domain, ttl=ttl)
        await server.start()
        out().print(f"dns ready on {server.host}:{server.port} (UDP and TCP) for {domain}; Ctrl-C stops")
        return server.close

    _serve(settings, namespace, rescan_interval, serve)


def run(argv: Sequence[str] | None) -> int:
    """Run the command line; returns the exit code."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="discovery", standalone_mode=False)
    except click.exceptions.Abort:
        err().print("aborted")
        return 130
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except DiscoveryError as error:
        err().print(f"discovery: {type(error).__name__}: {error}")
        return exit_code(error)
    except KeyboardInterrupt:
        return 130
    return 0

