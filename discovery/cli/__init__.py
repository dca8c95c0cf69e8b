"""The ``discovery`` command line.

* :func:`main` - the entry point: checks the ``[cli]`` extra, then runs the click app.
* :mod:`discovery.cli.app` - the click group, its global options, the list of subcommand modules, exit codes.
* :mod:`discovery.cli.session` - what every subcommand shares: ``--url`` and ``-v`` (before or after the
  subcommand) and a registry session, the no-URL warning, signals, common options, the exit codes.
* :mod:`discovery.cli.output` - consoles, the spinner, the rich table of each kind of object, ``-o`` printers.
* :mod:`discovery.cli.formats` - the documents of ``-o json|yaml`` (they read back into the model), ``-o name``.
* :mod:`discovery.cli.registry_commands` - ``services``, ``list``, ``watch``, ``register``.
* :mod:`discovery.cli.instance_commands` - ``drain``, ``set-status`` (on another process's registration).
* :mod:`discovery.cli.completion` - ``completion bash|zsh|fish`` and the completers that ask the backend.
* :mod:`discovery.cli.service_commands` - ``apply``, ``get``, ``describe``, ``delete`` (Services).
* :mod:`discovery.cli.server_commands` - ``proxy`` and ``dns``.
* :mod:`discovery.cli.xds_command` - ``xds``.
* :mod:`discovery.cli.demo` - ``discovery demo``, the README's walk-through.
* :mod:`discovery.cli.tables` - plain-text tables (the demo's and the benchmarks' output).

A new subcommand module lists its click commands in ``COMMANDS`` and is named once in
:data:`discovery.cli.app.COMMAND_MODULES`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``discovery`` command (the click group is :data:`discovery.cli.app.cli`)."""
    try:
        import click  # noqa: F401
        import rich  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as missing:
        print(
            f"discovery: the command line needs the [cli] extra ({missing.name} is missing): "
            "pip install 'service-discovery[cli]'",
            file=sys.stderr,
        )
        return 2
    from discovery.cli.app import run

    return run(argv)
