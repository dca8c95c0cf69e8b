"""The ``discovery`` command line.

* :func:`main` - the entry point: checks the ``[cli]`` extra, then runs the click app.
* :mod:`discovery.cli.commands` - the subcommands (click + rich).
* :mod:`discovery.cli.demo` - ``discovery demo``, the README's walk-through.
* :mod:`discovery.cli.tables` - plain-text tables shared by the demo and the commands.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``discovery`` command (subcommands in :mod:`discovery.cli.commands`)."""
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
    from discovery.cli import xds_command  # noqa: F401  (registers `discovery xds`)
    from discovery.cli.commands import run

    return run(argv)
