"""The ``discovery`` click group: global options (``--url``, ``-v``, ``--version``), the subcommand modules, and
:func:`run`, which turns errors into exit codes (see :mod:`discovery.cli.session`).

A subcommand module defines its click commands and lists them in ``COMMANDS``; naming the module in
:data:`COMMAND_MODULES` adds them to the group. The modules never import this one, so there is no import cycle.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

import click

from discovery import __version__
from discovery.cli.output import err
from discovery.cli.session import EXIT_INTERRUPTED, GlobalOptions, exit_code
from discovery.core.errors import DiscoveryError

#: The modules whose ``COMMANDS`` make up the command line: one line per module.
COMMAND_MODULES = (
    "discovery.cli.demo",
    "discovery.cli.registry_commands",
    "discovery.cli.service_commands",
    "discovery.cli.server_commands",
    "discovery.cli.xds_command",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="discovery", message="%(prog)s %(version)s")
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
    context.obj = GlobalOptions(url)


def _add_commands(group: click.Group) -> None:
    for name in COMMAND_MODULES:
        commands: list[click.Command] = importlib.import_module(name).COMMANDS
        for command in commands:
            group.add_command(command)


_add_commands(cli)


def command_paths(group: click.Group = cli) -> list[tuple[str, ...]]:
    """Every subcommand of ``group`` as the words that call it, nested groups included: ``("get", "services")``.

    The wheel check and the tests run ``--help`` on each, so a new command is covered without being listed.
    """
    paths: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        paths.append((name,))
        if isinstance(command, click.Group):
            paths.extend((name, *rest) for rest in command_paths(command))
    return paths


def run(argv: Sequence[str] | None) -> int:
    """Run the command line; returns the exit code."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="discovery", standalone_mode=False)
    except click.exceptions.Abort:
        err().print("aborted")
        return EXIT_INTERRUPTED
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except DiscoveryError as error:
        err().print(f"discovery: {type(error).__name__}: {error}")
        return exit_code(error)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0
