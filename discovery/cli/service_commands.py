"""Service subcommands (Kubernetes-style, durable definitions): ``apply``, ``get``, ``describe`` and ``delete``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from discovery.cli.completion import complete_service_definition
from discovery.cli.formats import description_document, endpoints_document, service_name, services_document
from discovery.cli.output import (
    OutputFormat,
    endpoints_table,
    err,
    key_value_table,
    out,
    output_option,
    print_document,
    print_names,
    service_table,
)
from discovery.cli.registry_commands import list_command
from discovery.cli.session import GlobalOptions, NotFound, namespace_option, with_options
from discovery.core.errors import ValidationError
from discovery.registry.async_registry import AsyncRegistry
from discovery.services import (
    AllocationRanges,
    LoadedService,
    ManifestErrors,
    ManifestProblem,
    Service,
    ServiceStore,
    parse_manifest_texts,
    read_endpoints,
)

with_ranges = with_options(
    click.option("--cluster-ip-range", default=None, metavar="CIDR",
                 help="ClusterIP range (default $DISCOVERY_CLUSTER_IP_RANGE or 127.10.0.0/16)"),
    click.option("--node-port-range", default=None, metavar="FIRST-LAST",
                 help="node port range (default $DISCOVERY_NODE_PORT_RANGE or 30000-32767)"),
)
#: NAME (optional), ``-n``, ``-A``: which Services ``get`` shows.
with_service_selection = with_options(
    click.argument("name", required=False, shell_complete=complete_service_definition),
    namespace_option,
    click.option("-A", "--all-namespaces", is_flag=True, help="every namespace"),
)
#: The files a directory given to ``-f`` contributes (not recursive, as kubectl without -R).
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def _manifest_files(names: Sequence[str]) -> tuple[list[tuple[str, str]], list[ManifestProblem]]:
    """``(text, source)`` of every file named (``-`` = stdin, a directory = its *.yaml, *.yml, *.json sorted), and
    a problem for each that cannot be read."""
    texts: list[tuple[str, str]] = []
    problems: list[ManifestProblem] = []
    for name in names:
        if name == "-":
            texts.append((sys.stdin.read(), "<stdin>"))
            continue
        path = Path(name)
        if path.is_dir():
            found = sorted(child for child in path.iterdir() if child.suffix in MANIFEST_SUFFIXES and child.is_file())
            if not found:
                problems.append(ManifestProblem(name, "-f", "the directory holds no *.yaml, *.yml or *.json file"))
            paths = found
        else:
            paths = [path]
        for file in paths:
            try:
                texts.append((file.read_text(encoding="utf-8"), str(file)))
            except (OSError, UnicodeDecodeError) as error:
                reason = error.strerror if isinstance(error, OSError) else "is not UTF-8 text"
                problems.append(ManifestProblem(str(file), "-f", f"cannot be read: {reason}"))
    return texts, problems


def _read_manifests(files: Sequence[str], namespace: str | None) -> list[LoadedService]:
    """Every Service of every file; all problems of all files and documents raised at once (nothing applied)."""
    texts, problems = _manifest_files(files)
    try:
        loaded = parse_manifest_texts(texts, default_namespace=namespace or "default")
    except ManifestErrors as bad:
        raise ManifestErrors([*problems, *bad.problems]) from None
    except ValidationError as bad:  # a single unreadable text (its own ManifestError) or the same Service twice
        if not problems:
            raise
        raise ManifestErrors([*problems, ManifestProblem("", bad.field, bad.reason)]) from None
    if problems:
        raise ManifestErrors(problems)
    return loaded


@click.command()
@click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE",
              help="manifest file or directory (YAML/JSON, several documents allowed, kind: List too; '-' = "
                   "stdin; repeatable, and more files may follow: -f a.yaml b.yaml)")
@click.argument("more_files", nargs=-1, metavar="[FILE]...")
@click.option("-n", "--namespace", default=None, help="namespace for manifests that name none (default: default)")
@with_ranges
@click.pass_obj
def apply(options: GlobalOptions, files: Sequence[str], more_files: Sequence[str], namespace: str | None,
          cluster_ip_range: str | None, node_port_range: str | None) -> None:
    """Create or update Services from manifests (apiVersion: v1, kind: Service).

    Every document of every file is checked first; all problems are reported together, each once, and then
    nothing is applied. A directory contributes its *.yaml, *.yml and *.json files, sorted by name.
    """
    loaded = _read_manifests([*files, *more_files], namespace)  # every document is checked before anything is written
    ranges = AllocationRanges.from_text(cluster_ip_range, node_port_range)

    async def work(registry: AsyncRegistry) -> None:
        store = ServiceStore(registry.backend, ranges)
        for item in loaded:
            for warning in item.warnings:
                err().print(f"warning: {item.source}: {warning}")
        for result in await store.apply_all([item.service for item in loaded]):  # all checked, then written
            out().print(f"service/{result.service.name} {result.action.value}")

    options.run(work, access="write")


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
@output_option()
@click.pass_obj
def get_services(options: GlobalOptions, name: str | None, namespace: str, all_namespaces: bool,
                 output: OutputFormat) -> None:
    """Services (one, a namespace's, or all with -A). ``-o yaml`` prints manifests ``apply -f`` takes back."""

    async def work(registry: AsyncRegistry) -> None:
        chosen = await _services_named(ServiceStore(registry.backend), name, namespace, all_namespaces)
        if output in ("json", "yaml"):
            print_document(services_document(chosen, single=name is not None), output)
        elif output == "name":
            print_names(service_name(service) for service in chosen)
        else:
            out().print(service_table(chosen, wide=output == "wide"))

    options.run(work, quiet=True)


@get.command(name="endpoints")
@with_service_selection
@output_option()
@click.pass_obj
def get_endpoints(options: GlobalOptions, name: str | None, namespace: str, all_namespaces: bool,
                  output: OutputFormat) -> None:
    """Endpoints of Services: UP instances matching the selector, target ports resolved."""

    async def work(registry: AsyncRegistry) -> None:
        chosen = await _services_named(ServiceStore(registry.backend), name, namespace, all_namespaces)
        found = [(service, await read_endpoints(registry, service)) for service in chosen]
        if output in ("json", "yaml"):
            documents = [endpoints_document(endpoints, service) for service, endpoints in found]
            print_document(documents[0] if name is not None else documents, output)
        elif output == "name":
            print_names(f"endpoints/{service.name}" for service, _ in found)
        else:
            out().print(endpoints_table([endpoints for _, endpoints in found], wide=output == "wide"))

    options.run(work, quiet=True)


get.add_command(list_command, name="instances")  # the same command as ``list``


@click.group()
def describe() -> None:
    """Show one object in detail."""


@describe.command(name="service")
@click.argument("name", shell_complete=complete_service_definition)
@namespace_option
@output_option()
@click.pass_obj
def describe_service(options: GlobalOptions, name: str, namespace: str, output: OutputFormat) -> None:
    """A Service, its DNS names and its endpoints (``-o json|yaml``: its manifest, DNS names, endpoints and the
    instances they come from)."""

    async def work(registry: AsyncRegistry) -> None:
        [service] = await _services_named(ServiceStore(registry.backend), name, namespace, False)
        endpoints = await read_endpoints(registry, service)
        if output in ("json", "yaml"):
            print_document(description_document(service, endpoints), output)
            return
        if output == "name":
            print_names([service_name(service)])
            return
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


_KINDS = ("service", "services", "svc")
_KIND_PREFIXES = tuple(f"{kind}/" for kind in _KINDS)


@click.command()
@click.argument("what", required=False, shell_complete=complete_service_definition)
@click.argument("names", nargs=-1, shell_complete=complete_service_definition)
@click.option("-f", "--filename", "files", multiple=True, metavar="FILE",
              help="delete the Services of a manifest (file, directory or '-')")
@namespace_option
@click.pass_obj
def delete(options: GlobalOptions, what: str | None, names: Sequence[str], files: Sequence[str],
           namespace: str) -> None:
    """Delete Services by name (``delete service NAME...``, ``delete service/NAME``) or by manifest (``-f FILE``).

    Exit 1 if any named Service did not exist (the others are deleted).
    """
    words = list(names)
    if what is not None and what.startswith(_KIND_PREFIXES):
        words.insert(0, what)
    elif what is not None and what not in _KINDS:
        raise click.BadParameter(f"{what!r}: say 'service NAME...' or 'service/NAME'", param_hint="WHAT")
    # ``service/NAME`` is what ``get services -o name`` prints
    keys = [(namespace, word.partition("/")[2] if word.startswith(_KIND_PREFIXES) else word) for word in words]
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

    options.run(work, access="write")


#: Added to the ``discovery`` group by :mod:`discovery.cli.app`.
COMMANDS: list[click.Command] = [apply, get, describe, delete]
