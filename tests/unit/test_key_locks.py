"""One lock per key, kept only while someone holds or awaits it: a process registering ever new ids keeps no state
per id it once wrote (the ZooKeeper adapter kept an ``asyncio.Lock`` per id for as long as the process lived)."""

from __future__ import annotations

import asyncio

from discovery.core.tasks import KeyLocks


async def test_a_key_is_forgotten_once_its_last_holder_and_waiter_are_done() -> None:
    locks = KeyLocks()
    order: list[str] = []
    released = asyncio.Event()

    async def first() -> None:
        async with locks.hold("a"):
            order.append("first in")
            await released.wait()
            order.append("first out")

    async def second() -> None:
        async with locks.hold("a"):
            order.append("second in")

    holder = asyncio.create_task(first())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(second())
    await asyncio.sleep(0)
    assert len(locks) == 1 and order == ["first in"]  # the waiter waits on the same lock
    released.set()
    await asyncio.gather(holder, waiter)
    assert order == ["first in", "first out", "second in"]
    assert len(locks) == 0


async def test_a_waiter_cancelled_while_waiting_leaves_no_key_behind() -> None:
    locks = KeyLocks()
    released = asyncio.Event()

    async def hold() -> None:
        async with locks.hold(("default", "svc", "a")):
            await released.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    released.set()
    await holder
    assert len(locks) == 0


async def test_many_keys_one_after_another_keep_nothing() -> None:
    locks = KeyLocks()
    for number in range(1000):
        async with locks.hold(("default", "svc", f"job-{number}")):
            assert len(locks) == 1
    assert len(locks) == 0
