"""What every subcommand shares: the global options with a registry session, the common options, the exit codes.

A subcommand receives :class:`GlobalOptions` as click's context object (``@click.pass_obj``) and runs its work
with :meth:`GlobalOptions.run`. Exit codes: 0 success, 1 not found, 2 bad input or configuration (the message
names the field), 3 the backend is unreachable, 4 the backend lacks a capability (e.g. it cannot store
Services), 130 interrupted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from discovery.cli.output import status
from discovery.core.errors import BackendUnavailableError, DiscoveryError, UnsupportedOperationError
from discovery.core.urls import redact_url
from discovery.registry.async_registry import AsyncRegistry

T = TypeVar("T")

EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_UNSUPPORTED = 4
EXIT_INTERRUPTED = 130


class NotFound(DiscoveryError):
    """A named object (a Service) does not exist: exit code 1."""


def exit_code(error: DiscoveryError) -> int:
    """The exit code for a library error."""
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, BackendUnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(error, UnsupportedOperationError):
        return EXIT_UNSUPPORTED
    return EXIT_BAD_INPUT


class GlobalOptions:
    """The options of the top-level group (``--url``), passed to every subcommand as click's context object."""

    def __init__(self, url: str | None) -> None:
        self.url = url

    def run(self, work: Callable[[AsyncRegistry], Coroutine[Any, Any, T]], *, quiet: bool = False) -> T:
        """Connect (with a spinner on a terminal unless ``quiet``), run ``work(registry)``, close."""

        async def session() -> T:
            with status(f"connecting to {redact_url(self.url)}", quiet):  # the URL may hold a password
                registry = await AsyncRegistry.connect(self.url)
            try:
                return await work(registry)
            finally:
                await registry.close()

        return asyncio.run(session())


namespace_option = click.option("-n", "--namespace", default="default", show_default=True, help="namespace")

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def with_options(*options: Decorator) -> Decorator:
    """One decorator that applies ``options`` (click options and arguments) in the order written."""

    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            function = option(function)
        return function

    return apply
