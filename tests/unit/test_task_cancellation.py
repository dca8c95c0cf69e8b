"""Stopping a helper task never swallows the stopping caller's own cancellation."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from discovery import AsyncRegistry, Instance
from discovery.core.errors import DiscoveryError
from discovery.core.tasks import cancel_and_wait

ROOT = Path(__file__).resolve().parents[2]


async def test_a_caller_cancelled_while_a_task_winds_down_is_cancelled() -> None:
    release = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # cleanup that takes a while
            raise

    helper = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(cancel_and_wait(helper))
    await asyncio.sleep(0)
    stopping.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping  # the suppress idiom returned normally here
    assert helper.cancelled()


async def test_the_tasks_own_end_is_taken_and_its_error_raised() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    failed = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait(failed)
    sleeper = asyncio.create_task(asyncio.sleep(3600))
    await cancel_and_wait(sleeper)
    assert sleeper.cancelled()


async def test_a_write_loop_cancelled_during_deregister_ends() -> None:
    # The fault suite's session probe: register, deregister (which stops the watch following the record),
    # DiscoveryError retried. Cancelled while deregister() waited for that watch to end, it ran on forever.
    async with await AsyncRegistry.connect("memory://cancel-loop") as registry:
        runaway = False

        async def loop() -> None:
            number = 0
            while not runaway:
                number += 1
                try:
                    registration = await registry.register(Instance("probe", f"p-{number}", "127.0.0.1", 1))
                    await registration.deregister()
                except DiscoveryError:
                    continue

        for attempt in range(50):  # land the cancellation at many points of the loop
            task = asyncio.create_task(loop())
            for _ in range(attempt % 7 + 1):
                await asyncio.sleep(0)
            task.cancel()
            done, _pending = await asyncio.wait({task}, timeout=5)
            if not done:
                runaway = True  # end it, so that the registry can close and the test report
                await asyncio.wait({task}, timeout=5)
            assert done, "the cancelled loop kept running"


def test_no_module_stops_a_task_with_the_swallowing_idiom() -> None:
    idiom = re.compile(r"suppress\(asyncio\.CancelledError\):\s*\n\s*await ")
    found = [str(path.relative_to(ROOT)) for folder in ("discovery", "backends")
             for path in (ROOT / folder).rglob("*.py") if idiom.search(path.read_text())]
    assert found == [], "use discovery.core.tasks.cancel_and_wait"
