"""What every subcommand shares: the global options with a registry session, the common options, the exit codes.

A subcommand receives :class:`GlobalOptions` as click's context object (``@click.pass_obj``) and runs its work
with :meth:`GlobalOptions.run`. The global options (``--url``, ``-v``) are accepted before the subcommand and
after it (``discovery list web --url etcd://...``): :func:`add_global_options` gives every subcommand its own copy,
whose value overrides the group's.

Exit codes (:data:`EXIT_CODES`): 0 success, 1 not found, 2 bad input or configuration (the message names the field),
3 the backend is unreachable, 4 the backend lacks a capability (e.g. it cannot store Services), 130 interrupted
(Ctrl-C). A long-running command stopped by SIGTERM exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Literal, TypeVar

import click

from discovery.cli.output import err, status
from discovery.core.errors import BackendUnavailableError, DiscoveryError, UnsupportedOperationError
from discovery.core.urls import redact_url
from discovery.registry.async_registry import AsyncRegistry

T = TypeVar("T")

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_UNSUPPORTED = 4
EXIT_INTERRUPTED = 130

#: Every exit code and what it means (the README's table and ``discovery --help`` say the same).
EXIT_CODES = {
    EXIT_OK: "success (a long-running command stopped by SIGTERM too)",
    EXIT_NOT_FOUND: "not found (a Service or an instance that does not exist)",
    EXIT_BAD_INPUT: "bad input or configuration (the message names the field)",
    EXIT_UNAVAILABLE: "the backend is unreachable",
    EXIT_UNSUPPORTED: "the backend lacks a capability (storing Services, changing a read-only registration)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGINT)",
}

#: ``ctx.meta`` key of the URL named by ``--url`` (or ``$DISCOVERY_URL``) wherever it was given; shell
#: completion reads it there, since the group's callback (which makes :class:`GlobalOptions`) does not run then.
URL_META = "discovery.url"

#: How a command uses the backend: what the warning about a throwaway memory backend says.
Access = Literal["read", "write", "follow"]

_THROWAWAY = {
    "write": "what this command writes is gone when it exits",
    "read": "it holds nothing that another process registered or applied",
    "follow": "registrations and Services of other processes are never seen",
}


class NotFound(DiscoveryError):
    """A named object (a Service, an instance) does not exist: exit code 1."""


class Interrupted(Exception):
    """The command was stopped by SIGINT (Ctrl-C) after cleaning up: exit code 130."""


def exit_code(error: DiscoveryError) -> int:
    """The exit code for a library error."""
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, BackendUnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(error, UnsupportedOperationError):
        return EXIT_UNSUPPORTED
    return EXIT_BAD_INPUT


def configure_logging(verbose: int) -> None:
    """Log to stderr at WARNING, INFO (``-v``) or DEBUG (``-vv``)."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)
    # kazoo logs every failed connection attempt; our own error says what matters
    logging.getLogger("kazoo").setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)


class GlobalOptions:
    """The global options (``--url``, ``-v``), passed to every subcommand as click's context object.

    ``url`` is ``None`` when neither ``--url`` nor ``$DISCOVERY_URL`` names a backend: the registry is then a
    ``memory://`` store that lives only in this process, and :meth:`run` says so on stderr.
    """

    def __init__(self, url: str | None, verbose: int = 0) -> None:
        self.url = url
        self.verbose = verbose

    @property
    def throwaway(self) -> bool:
        """Whether no URL is configured, so the backend is a memory store of this process only."""
        return self.url is None

    def warn_if_throwaway(self, access: Access) -> None:
        """One warning on stderr when no URL is configured (the memory backend dies with this process)."""
        if self.throwaway:
            err().print(f"discovery: warning: no --url and no DISCOVERY_URL: using a memory:// backend that lives "
                        f"only in this process; {_THROWAWAY[access]}")

    def run(self, work: Callable[[AsyncRegistry], Coroutine[Any, Any, T]], *, access: Access = "read",
            quiet: bool = False) -> T:
        """Connect (with a spinner on a terminal unless ``quiet``), run ``work(registry)``, close.

        Warns first when no URL is configured (see :meth:`warn_if_throwaway`).
        """
        self.warn_if_throwaway(access)

        async def session() -> T:
            with status(f"connecting to {redact_url(self.url)}", quiet):  # the URL may hold a password
                registry = await AsyncRegistry.connect(self.url)
            try:
                return await work(registry)
            finally:
                await registry.close()

        return asyncio.run(session())


def stop_signals() -> asyncio.Future[int]:
    """Handle SIGINT and SIGTERM on the running loop from now on; the future gets the exit code the first one calls
    for: SIGINT (Ctrl-C) → :data:`EXIT_INTERRUPTED`, SIGTERM (a supervisor stopping the process) → :data:`EXIT_OK`.

    Installed at once (not when a task first runs), so a signal that comes while the command is still starting also
    lets it clean up (deregister, close listeners) before it exits. Closing the loop removes the handlers.
    """
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[int] = loop.create_future()

    def stop(code: int) -> None:
        if not stopped.done():
            stopped.set_result(code)

    loop.add_signal_handler(signal.SIGINT, stop, EXIT_INTERRUPTED)
    loop.add_signal_handler(signal.SIGTERM, stop, EXIT_OK)
    return stopped


def finish(code: int) -> None:
    """End a command with ``code`` (raises :class:`Interrupted` for 130, after the caller cleaned up)."""
    if code == EXIT_INTERRUPTED:
        raise Interrupted()


# -- the global options, accepted after the subcommand too ----------------------------------------------------------


def _url_given(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    ctx.meta[URL_META] = value
    options = ctx.find_object(GlobalOptions)
    if options is not None:
        options.url = value


def _more_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    options = ctx.find_object(GlobalOptions)
    if value and options is not None:
        options.verbose += value
        configure_logging(options.verbose)


def _global_options() -> list[click.Option]:
    return [
        click.Option(["--url"], default=None, expose_value=False, callback=_url_given, metavar="URL",
                     help="backend URL (also accepted before the subcommand; default $DISCOVERY_URL)"),
        click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_more_verbose,
                     help="log more (-v info, -vv debug)"),
    ]


def _walk(command: click.Command) -> Iterator[click.Command]:
    yield command
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            yield from _walk(sub)


def add_global_options(group: click.Group) -> None:
    """Give every subcommand of ``group`` (nested ones too) its own ``--url`` and ``-v``, so that they may follow
    the subcommand; a value given there overrides the group's."""
    seen: set[int] = set()
    for command in _walk(group):
        if command is group or id(command) in seen:
            continue
        seen.add(id(command))  # a command added twice (``list`` is also ``get instances``) gets them once
        command.params.extend(_global_options())


namespace_option = click.option("-n", "--namespace", default="default", show_default=True, help="namespace")

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def with_options(*options: Decorator) -> Decorator:
    """One decorator that applies ``options`` (click options and arguments) in the order written."""

    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            function = option(function)
        return function

    return apply
