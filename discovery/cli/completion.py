"""``discovery completion bash|zsh|fish``: the shell completion script, and the completers that ask the backend.

The script is click's own (``click.shell_completion``): the shell runs ``discovery`` again with
``_DISCOVERY_COMPLETE=<shell>_complete`` and the words typed so far, and click answers with the commands, options
and choices, and with what the completers below return for a SERVICE, a Service NAME or an INSTANCE. They read the
backend named by ``--url`` (typed before the word being completed, before or after the subcommand) or by
``$DISCOVERY_URL``, within :data:`COMPLETION_TIMEOUT` seconds; an unreachable backend completes nothing, silently.

Install: ``eval "$(discovery completion bash)"`` in ``~/.bashrc`` (zsh: the same with ``zsh`` in ``~/.zshrc``;
fish: ``discovery completion fish > ~/.config/fish/completions/discovery.fish``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

import click
from click.shell_completion import CompletionItem, get_completion_class

from discovery.cli.session import URL_META
from discovery.core.models import DEFAULT_NAMESPACE
from discovery.registry.async_registry import AsyncRegistry
from discovery.services import ServiceStore

#: Seconds a completion may spend connecting and reading; a shell waits for it.
COMPLETION_TIMEOUT = 3.0
#: Names offered at most (a shell lists them all).
MAX_COMPLETIONS = 500
SHELLS = ("bash", "zsh", "fish")


def _url(ctx: click.Context) -> str | None:
    url = ctx.meta.get(URL_META)
    return str(url) if url is not None else os.environ.get("DISCOVERY_URL")


def _namespace(ctx: click.Context) -> str:
    value = ctx.params.get("namespace")
    return value if isinstance(value, str) and value else DEFAULT_NAMESPACE


def _ask(ctx: click.Context, read: Callable[[AsyncRegistry], Awaitable[list[str]]]) -> list[str]:
    """``read(registry)`` on the configured backend within the timeout; nothing on any failure (a shell must never
    show a traceback, and without a URL the memory backend of this completion process holds nothing anyway)."""
    url = _url(ctx)
    if url is None:
        return []

    async def session() -> list[str]:
        async with asyncio.timeout(COMPLETION_TIMEOUT):
            async with AsyncRegistry.connect(url) as registry:
                return await read(registry)

    logging.disable(logging.CRITICAL)  # backend clients log their connection attempts; the terminal is the shell's
    try:
        return asyncio.run(session())[:MAX_COMPLETIONS]
    except Exception:
        return []
    finally:
        logging.disable(logging.NOTSET)


def complete_service(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Registry services of the namespace (``-n``, typed before) that have instances."""

    async def read(registry: AsyncRegistry) -> list[str]:
        return list(await registry.services(_namespace(ctx)))

    return [CompletionItem(name) for name in _ask(ctx, read) if name.startswith(incomplete)]


def complete_service_definition(ctx: click.Context, _param: click.Parameter,
                                incomplete: str) -> list[CompletionItem]:
    """Stored Services (``apply``'d definitions) of the namespace."""

    async def read(registry: AsyncRegistry) -> list[str]:
        return [service.name for service in await ServiceStore(registry.backend).list(_namespace(ctx))]

    return [CompletionItem(name) for name in _ask(ctx, read) if name.startswith(incomplete)]


def complete_instance(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``<service>/`` while the service is being typed, then ``<service>/<id>`` of its instances."""
    service, slash, _ = incomplete.partition("/")

    async def read(registry: AsyncRegistry) -> list[str]:
        namespace = _namespace(ctx)
        if not slash:
            return [f"{name}/" for name in await registry.services(namespace)]
        found = await registry.instances(service, namespace, statuses=None)
        return [f"{service}/{instance.id}" for instance in found]

    return [CompletionItem(name, type="plain") for name in _ask(ctx, read) if name.startswith(incomplete)]


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (commands, options, and service names read from the backend).

    \b
    bash:  eval "$(discovery completion bash)"      (in ~/.bashrc)
    zsh:   eval "$(discovery completion zsh)"       (in ~/.zshrc)
    fish:  discovery completion fish > ~/.config/fish/completions/discovery.fish
    """
    shell_class = get_completion_class(shell)
    if shell_class is None:  # pragma: no cover - click ships all three
        raise click.UsageError(f"click has no completion for {shell}")
    root = ctx.find_root().command
    click.echo(shell_class(root, {}, "discovery", "_DISCOVERY_COMPLETE").source())


#: Added to the ``discovery`` group by :mod:`discovery.cli.app`.
COMMANDS: list[click.Command] = [completion]
