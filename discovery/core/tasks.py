"""Ending a background task from the code that owns it."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has ended; an error it ended with is raised, as awaiting it would.

    A cancellation of the *caller* meanwhile is raised too. The idiom this replaces,
    ``task.cancel(); with suppress(CancelledError): await task``, cannot tell the task's cancellation from the
    caller's and swallowed both: a caller cancelled while stopping a helper task (a registry's ``deregister()``
    ending the watch that followed its record) went on running, and a loop around it never ended.
    """
    task.cancel()
    await asyncio.wait({task})  # raises CancelledError only when the caller is cancelled
    if not task.cancelled():
        error = task.exception()
        if error is not None:
            raise error
