"""The ``discovery`` click group: global options (``--url``, ``-v``, ``--version``), the subcommand modules, and
:func:`run`, which turns errors into exit codes (see :mod:`discovery.cli.session`).

A subcommand module defines its click commands and lists them in ``COMMANDS``; naming the module in
:data:`COMMAND_MODULES` adds them to the group. The modules never import this one, so there is no import cycle.
Every subcommand also accepts ``--url`` and ``-v`` after its name (:func:`discovery.cli.session.add_global_options`).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import click

from discovery import __version__
from discovery.cli.output import err
from discovery.cli.session import (
    EXIT_CODES,
    EXIT_INTERRUPTED,
    URL_META,
    GlobalOptions,
    Interrupted,
    add_global_options,
    configure_logging,
    exit_code,
)
from discovery.core.errors import DiscoveryError
from discovery.services import ManifestErrors

#: The modules whose ``COMMANDS`` make up the command line: one line per module.
COMMAND_MODULES = (
    "discovery.cli.demo",
    "discovery.cli.registry_commands",
    "discovery.cli.instance_commands",
    "discovery.cli.service_commands",
    "discovery.cli.server_commands",
    "discovery.cli.xds_command",
    "discovery.cli.completion",
)

_EPILOG = "Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()) + "."


def _remember_url(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        ctx.meta[URL_META] = value  # shell completion reads it here (the group's callback does not run then)
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG)
@click.version_option(__version__, "--version", prog_name="discovery", message="%(prog)s %(version)s")
@click.option("--url", envvar="DISCOVERY_URL", default=None, show_envvar=True, callback=_remember_url,
              help="backend URL: memory://, zookeeper://h:2181/root, etcd://h:2379/prefix, consul://h:8500/scope "
                   "(also accepted after the subcommand)")
@click.option("-v", "--verbose", count=True, help="log more (-v info, -vv debug)")
@click.pass_context
def cli(context: click.Context, url: str | None, verbose: int) -> None:
    """Service discovery over ZooKeeper, etcd, Consul (or in memory), with Kubernetes-style Services."""
    configure_logging(verbose)
    context.obj = GlobalOptions(url, verbose)


def _add_commands(group: click.Group) -> None:
    for name in COMMAND_MODULES:
        commands: list[click.Command] = importlib.import_module(name).COMMANDS
        for command in commands:
            group.add_command(command)


_add_commands(cli)
add_global_options(cli)


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
    """Run the command line; returns the exit code (see :data:`discovery.cli.session.EXIT_CODES`)."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="discovery", standalone_mode=False)
    except click.exceptions.Abort:
        err().print("aborted")
        return EXIT_INTERRUPTED
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except ManifestErrors as error:
        lines = str(error).splitlines()
        err().print(f"discovery: {len(error.problems)} problem(s) in the manifests; nothing was applied:")
        for line in lines:
            err().print(f"  {line}")
        return exit_code(error)
    except DiscoveryError as error:
        err().print(f"discovery: {type(error).__name__}: {error}")
        return exit_code(error)
    except (KeyboardInterrupt, Interrupted):
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else 0
