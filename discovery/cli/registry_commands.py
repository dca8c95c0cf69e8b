"""Registry subcommands: ``services``, ``list``, ``watch`` and ``register`` (instances, no Service definitions)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import click
from rich.live import Live

from discovery.cli.completion import complete_service
from discovery.cli.formats import instance_name, instances_document
from discovery.cli.output import (
    OutputFormat,
    instance_table,
    new_table,
    out,
    output_option,
    print_document,
    print_json_line,
    print_names,
    print_yaml_document,
    snapshot_table,
)
from discovery.cli.session import GlobalOptions, finish, namespace_option, stop_signals
from discovery.core.codec import snapshot_to_dict
from discovery.core.models import Instance, Snapshot, Status
from discovery.core.selectors import parse_selector
from discovery.registry.async_registry import AsyncRegistry
from discovery.registry.registration import AsyncRegistration

service_argument = click.argument("service", shell_complete=complete_service)
selector_option = click.option("-l", "--selector", default=None,
                               help="label selector, e.g. 'app=web,tier!=db,env in (prod,stage)'")


@click.command()
@namespace_option
@output_option()
@click.pass_obj
def services(options: GlobalOptions, namespace: str, output: OutputFormat) -> None:
    """Names of the registry services that have instances (``-o wide``: with their instance counts)."""

    async def work(registry: AsyncRegistry) -> None:
        names = await registry.services(namespace)
        if output in ("json", "yaml"):
            print_document(list(names), output)
        elif output == "wide":
            table = new_table("NAME", "INSTANCES", "UP")
            for name in names:
                found = await registry.instances(name, namespace, statuses=None)
                table.add_row(name, str(len(found)), str(sum(i.status is Status.UP for i in found)))
            out().print(table)
        else:
            print_names(names)

    options.run(work, quiet=True)


def print_instances(instances: Sequence[Instance], output: OutputFormat) -> None:
    """Instances in the chosen format (a table, canonical dicts, or ``<service>/<id>`` names)."""
    if output in ("json", "yaml"):
        print_document(instances_document(instances), output)
    elif output == "name":
        print_names(instance_name(instance) for instance in instances)
    else:
        out().print(instance_table(instances, wide=output == "wide"))


@click.command(name="list")
@service_argument
@namespace_option
@selector_option
@click.option("--all", "every", is_flag=True, help="every status, not only UP")
@output_option()
@click.pass_obj
def list_command(options: GlobalOptions, service: str, namespace: str, selector: str | None, every: bool,
                 output: OutputFormat) -> None:
    """Instances of a registry service (``list`` and ``get instances`` are one command)."""

    async def work(registry: AsyncRegistry) -> None:
        statuses = None if every else (Status.UP,)
        print_instances(await registry.instances(service, namespace, selector=selector, statuses=statuses), output)

    options.run(work, quiet=True)


@click.command()
@service_argument
@namespace_option
@selector_option
@output_option("table", "wide", "json", "yaml")
@click.pass_obj
def watch(options: GlobalOptions, service: str, namespace: str, selector: str | None, output: OutputFormat) -> None:
    """Follow a registry service until Ctrl-C: a live table on a terminal, one table per change otherwise.

    ``-o json`` prints one JSON line per change (a snapshot: service, namespace, revision, stale, instances),
    ``-o yaml`` one YAML document per change. With ``-l`` only the matching instances are shown, and a change
    that leaves them as they were prints nothing.
    """
    chosen = parse_selector(selector)  # a bad selector is exit 2 before anything connects

    def shown(snapshot: Snapshot) -> Snapshot:
        if not chosen:
            return snapshot
        matching = tuple(i for i in snapshot.instances if chosen.matches(i.labels))
        return Snapshot(snapshot.service, snapshot.namespace, matching, snapshot.revision, snapshot.stale)

    async def work(registry: AsyncRegistry) -> None:
        stop = stop_signals()
        printed: Snapshot | None = None
        live = Live(console=out(), auto_refresh=False) if output in ("table", "wide") and out().is_terminal else None
        try:
            if live is not None:
                live.start()
            async with registry.watch(service, namespace) as snapshots:
                while not stop.done():
                    step = asyncio.ensure_future(snapshots.__anext__())
                    waiting: list[asyncio.Future[Any]] = [step, stop]
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if not step.done():
                        step.cancel()
                        break
                    snapshot = shown(step.result())
                    if printed is not None and printed.stale == snapshot.stale and printed.same_members(snapshot):
                        continue  # the selector hides this change
                    printed = snapshot
                    _print_snapshot(snapshot, output, live)
        finally:
            if live is not None:
                live.stop()
        finish(await stop)

    options.run(work, access="follow", quiet=True)


def _print_snapshot(snapshot: Snapshot, output: OutputFormat, live: Live | None) -> None:
    if output == "json":
        print_json_line(snapshot_to_dict(snapshot))
    elif output == "yaml":
        print_yaml_document(snapshot_to_dict(snapshot))
    elif live is not None:
        live.update(snapshot_table(snapshot, wide=output == "wide"), refresh=True)
    else:
        out().print(snapshot_table(snapshot, wide=output == "wide"))


def _pairs(option: str, items: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint=option)
        pairs[key] = value
    return pairs


@click.command()
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
def register(options: GlobalOptions, service: str, instance_id: str, address: str, port: int, namespace: str,
             labels: Sequence[str], named_ports: Sequence[str], ttl: float | None) -> None:
    """Register an instance and keep it registered until Ctrl-C (exit 130) or SIGTERM (exit 0).

    A status or label change someone else makes to the registration (``discovery drain``, ``set-status``) is
    adopted and printed; it is kept through the backend's keep-alive and self-healing.
    """
    try:
        ports = {name: int(number) for name, number in _pairs("--port-name", named_ports).items()}
    except ValueError:
        raise click.BadParameter("the port must be a number", param_hint="--port-name") from None
    instance = Instance(service, instance_id, address, port, namespace=namespace,
                        labels=_pairs("--label", labels), ports=ports)

    async def work(registry: AsyncRegistry) -> None:
        stop = stop_signals()  # signals handled from here on: Ctrl-C deregisters too
        registration = await registry.register(instance, ttl=ttl)
        registration.on_instance_change(_print_adopted)
        out().print(f"registered {namespace}/{service}/{instance_id} at {address}:{port} "
                    f"(ttl {registration.ttl:g}s); Ctrl-C deregisters")
        code = await stop
        await registration.deregister()
        out().print("deregistered")
        finish(code)

    options.run(work, access="write", quiet=True)


def _print_adopted(registration: AsyncRegistration, instance: Instance) -> None:
    out().print(f"changed by someone else, adopted: {instance.namespace}/{instance.service}/{instance.id} is "
                f"{instance.status.value} (labels {','.join(f'{k}={v}' for k, v in instance.labels.items()) or '-'})")


#: Added to the ``discovery`` group by :mod:`discovery.cli.app`.
COMMANDS: list[click.Command] = [services, list_command, watch, register]
