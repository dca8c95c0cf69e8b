"""Registry subcommands: ``services``, ``list``, ``watch`` and ``register`` (instances, no Service definitions)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence

import click
from rich.live import Live

from discovery.cli.output import instance_table, out, snapshot_table
from discovery.cli.session import GlobalOptions, namespace_option
from discovery.core.models import Instance, Status
from discovery.registry.async_registry import AsyncRegistry
from discovery.registry.blocking import Registry


@click.command()
@namespace_option
@click.pass_obj
def services(options: GlobalOptions, namespace: str) -> None:
    """Names of the registry services that have instances."""

    async def work(registry: AsyncRegistry) -> None:
        for name in await registry.services(namespace):
            out().print(name)

    options.run(work, quiet=True)


@click.command(name="list")
@click.argument("service")
@namespace_option
@click.option("-l", "--selector", default=None, help="label selector, e.g. 'app=web,tier!=db'")
@click.option("--all", "every", is_flag=True, help="every status, not only UP")
@click.pass_obj
def list_command(options: GlobalOptions, service: str, namespace: str, selector: str | None, every: bool) -> None:
    """Instances of a registry service (``list`` and ``get instances`` are one command)."""

    async def work(registry: AsyncRegistry) -> None:
        statuses = None if every else (Status.UP,)
        found = await registry.instances(service, namespace, selector=selector, statuses=statuses)
        out().print(instance_table(found))

    options.run(work, quiet=True)


@click.command()
@click.argument("service")
@namespace_option
@click.pass_obj
def watch(options: GlobalOptions, service: str, namespace: str) -> None:
    """Follow a registry service: a live table on a terminal, one table per change otherwise."""
    with Registry.connect(options.url) as registry, registry.watch(service, namespace) as snapshots:
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
    """Register an instance and keep it registered until Ctrl-C."""
    try:
        ports = {name: int(number) for name, number in _pairs("--port-name", named_ports).items()}
    except ValueError:
        raise click.BadParameter("the port must be a number", param_hint="--port-name") from None
    instance = Instance(service, instance_id, address, port, namespace=namespace,
                        labels=_pairs("--label", labels), ports=ports)
    with Registry.connect(options.url) as registry:
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


#: Added to the ``discovery`` group by :mod:`discovery.cli.app`.
COMMANDS: list[click.Command] = [services, list_command, watch, register]
