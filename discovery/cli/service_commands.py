"""Service subcommands (Kubernetes-style, durable definitions): ``apply``, ``get``, ``describe`` and ``delete``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from discovery.cli.output import endpoints_table, err, key_value_table, out, service_table
from discovery.cli.registry_commands import list_command
from discovery.cli.session import GlobalOptions, NotFound, namespace_option, with_options
from discovery.registry.async_registry import AsyncRegistry
from discovery.services import AllocationRanges, LoadedService, Service, ServiceStore, parse_manifests, read_endpoints

with_ranges = with_options(
    click.option("--cluster-ip-range", default=None, metavar="CIDR",
                 help="ClusterIP range (default $DISCOVERY_CLUSTER_IP_RANGE or 127.10.0.0/16)"),
    click.option("--node-port-range", default=None, metavar="FIRST-LAST",
                 help="node port range (default $DISCOVERY_NODE_PORT_RANGE or 30000-32767)"),
)
#: NAME (optional), ``-n``, ``-A``: which Services ``get`` shows.
with_service_selection = with_options(
    click.argument("name", required=False),
    namespace_option,
    click.option("-A", "--all-namespaces", is_flag=True, help="every namespace"),
)


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


@click.command()
@click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE",
              help="manifest file (YAML, several documents allowed; '-' = stdin; repeatable)")
@click.option("-n", "--namespace", default=None, help="namespace for manifests that name none (default: default)")
@with_ranges
@click.pass_obj
def apply(options: GlobalOptions, files: Sequence[str], namespace: str | None, cluster_ip_range: str | None,
          node_port_range: str | None) -> None:
    """Create or update Services from manifests (apiVersion: v1, kind: Service)."""
    loaded = _read_manifests(files, namespace)  # every document is checked before anything is written
    ranges = AllocationRanges.from_text(cluster_ip_range, node_port_range)

    async def work(registry: AsyncRegistry) -> None:
        store = ServiceStore(registry.backend, ranges)
        for item in loaded:
            for warning in item.warnings:
                err().print(f"warning: {item.source}: {warning}")
        for result in await store.apply_all([item.service for item in loaded]):  # all checked, then written
            out().print(f"service/{result.service.name} {result.action.value}")

    options.run(work)


async def _services_named(store: ServiceStore, name: str | None, namespace: str, every: bool) -> list[Service]:
    if name is not None:
        found = await store.get(name, namespace)
        if found is None:
            raise NotFound(f'service "{name}" not found in namespace "{namespace}"')
        return [found]
    return list(await store.list(None if every else namespace))


@click.group()
def get() -> None:
    """Show services, endpoints or instances."""


@get.command(name="services")
@with_service_selection
@click.pass_obj
def get_services(options: GlobalOptions, name: str | None, namespace: str, all_namespaces: bool) -> None:
    """Services (one, a namespace's, or all with -A)."""

    async def work(registry: AsyncRegistry) -> None:
        chosen = await _services_named(ServiceStore(registry.backend), name, namespace, all_namespaces)
        out().print(service_table(chosen))

    options.run(work, quiet=True)


@get.command(name="endpoints")
@with_service_selection
@click.pass_obj
def get_endpoints(options: GlobalOptions, name: str | None, namespace: str, all_namespaces: bool) -> None:
    """Endpoints of Services: UP instances matching the selector, target ports resolved."""

    async def work(registry: AsyncRegistry) -> None:
        chosen = await _services_named(ServiceStore(registry.backend), name, namespace, all_namespaces)
        out().print(endpoints_table([await read_endpoints(registry, service) for service in chosen]))

    options.run(work, quiet=True)


get.add_command(list_command, name="instances")  # the same command as ``list``


@click.group()
def describe() -> None:
    """Show one object in detail."""


@describe.command(name="service")
@click.argument("name")
@namespace_option
@click.pass_obj
def describe_service(options: GlobalOptions, name: str, namespace: str) -> None:
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
        out().print(key_value_table(rows))

    options.run(work, quiet=True)


@click.command()
@click.argument("what", required=False, type=click.Choice(["service", "services", "svc"]))
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", "files", multiple=True, metavar="FILE", help="delete the Services of a manifest")
@namespace_option
@click.pass_obj
def delete(options: GlobalOptions, what: str | None, names: Sequence[str], files: Sequence[str],
           namespace: str) -> None:
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

    options.run(work)


#: Added to the ``discovery`` group by :mod:`discovery.cli.app`.
COMMANDS: list[click.Command] = [apply, get, describe, delete]
