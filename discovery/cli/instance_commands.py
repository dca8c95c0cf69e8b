"""Operator commands on one instance, whichever process registered it: ``drain`` and ``set-status``.

They act through the backend's own mechanism (:meth:`discovery.AsyncRegistry.set_status`): Consul's maintenance
mode and status check, a rewrite of the etcd key on the owner's lease, a rewrite of the ZooKeeper znode that keeps
its ephemeral owner. The owning registration adopts the change (it follows its own record), so neither its
keep-alive nor its self-healing writes the old status back. See docs/decisions/cli-operator-status.md.
"""

from __future__ import annotations

import click

from discovery.cli.completion import complete_instance
from discovery.cli.formats import instance_name
from discovery.cli.output import out
from discovery.cli.session import GlobalOptions, NotFound, namespace_option
from discovery.core.errors import NotRegisteredError
from discovery.core.models import Status
from discovery.registry.async_registry import AsyncRegistry

instance_argument = click.argument("instance", metavar="SERVICE/ID", shell_complete=complete_instance)


def _split(instance: str) -> tuple[str, str]:
    service, slash, instance_id = instance.partition("/")
    if not slash or not service or not instance_id:
        raise click.BadParameter(f"{instance!r} is not SERVICE/ID (e.g. web/web-1; the namespace is -n)",
                                 param_hint="SERVICE/ID")
    return service, instance_id


def _set_status(options: GlobalOptions, instance: str, namespace: str, status: Status) -> None:
    service, instance_id = _split(instance)

    async def work(registry: AsyncRegistry) -> None:
        try:
            changed = await registry.set_status(service, instance_id, status, namespace)
        except NotRegisteredError as missing:
            raise NotFound(str(missing)) from None
        out().print(f"{namespace}/{instance_name(changed)} is {changed.status.value}")

    options.run(work, access="write", quiet=True)


@click.command()
@instance_argument
@namespace_option
@click.pass_obj
def drain(options: GlobalOptions, instance: str, namespace: str) -> None:
    """Set an instance DRAINING: it stays registered and leaves every client's new picks.

    Acts on a registration another process holds (Consul: maintenance mode). Undo with ``set-status ... UP``.
    Exit 1 when no such instance is registered, 4 for a read-only (foreign) registration.
    """
    _set_status(options, instance, namespace, Status.DRAINING)


@click.command(name="set-status")
@instance_argument
@click.argument("status", type=click.Choice([s.value for s in Status], case_sensitive=False))
@namespace_option
@click.pass_obj
def set_status(options: GlobalOptions, instance: str, status: str, namespace: str) -> None:
    """Set the status (UP, DRAINING, DOWN, STARTING) of an instance another process registered.

    Only UP instances are picked. Exit 1 when no such instance is registered, 4 for a read-only (foreign)
    registration or a status its backend cannot express.
    """
    _set_status(options, instance, namespace, Status(status.upper()))


#: Added to the ``discovery`` group by :mod:`discovery.cli.app`.
COMMANDS: list[click.Command] = [drain, set_status]
