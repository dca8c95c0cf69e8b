"""The kazoo-to-asyncio bridge's cheaper per-request path (docs/decisions/zookeeper-writes.md): replies handed to
a loop in one wake-up per burst and in order, results that build no condition unless a thread blocks on them,
and a ``select`` answered by ``poll`` the same way kazoo's own selector answers it. No server needed."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.handlers.utils import selector_select

from discovery_zookeeper.bridge import LoopHandler, call_in_loop


@pytest.fixture
def handler() -> Iterator[LoopHandler]:
    started = LoopHandler()
    started.start()
    yield started
    started.stop()


def test_a_burst_handed_over_from_a_thread_wakes_the_loop_once_and_runs_in_order() -> None:
    async def main() -> tuple[list[int], int, list[str]]:
        loop = asyncio.get_running_loop()
        wake_ups = 0
        plain = loop.call_soon_threadsafe

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal wake_ups
            wake_ups += 1
            return plain(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        ran: list[int] = []
        errors: list[str] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(repr(context.get("exception"))))
        handed_over, done = threading.Event(), asyncio.Event()

        def fail() -> None:
            raise KeyError("one failing callback")

        def kazoo_thread() -> None:
            for number in range(500):
                call_in_loop(loop, ran.append, number)
                if number == 250:
                    call_in_loop(loop, fail)
            call_in_loop(loop, done.set)
            handed_over.set()

        threading.Thread(target=kazoo_thread).start()
        handed_over.wait(10)  # the loop is held here: the whole burst arrives while it is busy
        await asyncio.wait_for(done.wait(), 5)
        return ran, wake_ups, errors

    ran, wake_ups, errors = asyncio.run(main())
    assert ran == list(range(500)), "every callback runs, in the order handed over, past a failing one"
    assert wake_ups == 1, f"{wake_ups} loop wake-ups for one burst of 502 hand-overs"
    assert errors == ["KeyError('one failing callback')"], "a failing callback is reported to the loop"


def test_hand_overs_after_a_drain_wake_the_loop_again() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        seen: list[str] = []
        for word in ("first", "second", "third"):
            arrived = asyncio.Event()

            def hand_over(word: str = word, arrived: asyncio.Event = arrived) -> None:
                call_in_loop(loop, seen.append, word)
                call_in_loop(loop, arrived.set)

            threading.Thread(target=hand_over).start()
            await asyncio.wait_for(arrived.wait(), 5)
        return seen

    assert asyncio.run(main()) == ["first", "second", "third"]


def test_a_hand_over_to_a_closed_loop_is_dropped() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    call_in_loop(loop, pytest.fail, "ran on a closed loop")  # no error, nothing runs


def test_a_result_blocks_a_thread_until_it_is_set_and_times_out_as_kazoos(handler: LoopHandler) -> None:
    result = handler.async_result()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(result.get(timeout=10)))
    waiter.start()
    time.sleep(0.05)  # most likely the waiter blocks first (its wait builds the condition); either order must work
    result.set("reply")
    waiter.join(10)
    assert got == ["reply"]
    assert result.get() == "reply" and result.wait(0) is True

    unanswered = handler.async_result()
    started = time.monotonic()
    with pytest.raises(KazooTimeoutError):
        unanswered.get(timeout=0.05)
    assert time.monotonic() - started < 5
    failed = handler.async_result()
    failed.set_exception(KeyError("no node"))
    with pytest.raises(KeyError):
        failed.get()


def test_a_result_runs_kazoos_rawlink_callbacks(handler: LoopHandler) -> None:
    result = handler.async_result()
    called = threading.Event()
    result.rawlink(lambda settled: called.set() if settled.get() == 7 else None)
    result.set(7)
    assert called.wait(5)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


def _same_as_kazoo(rlist: list[Any], wlist: list[Any]) -> tuple[Any, ...]:
    ours = LoopHandler().select(rlist, wlist, [], 0)
    assert ours == selector_select(rlist, wlist, [], 0)
    return tuple(ours)


def test_select_answers_as_kazoos_selector(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    assert _same_as_kazoo([left], []) == ([], [], [])  # nothing to read
    assert _same_as_kazoo([], [left]) == ([], [left], [])  # room to write
    right.send(b"x")
    assert _same_as_kazoo([left, right], []) == ([left], [], [])
    # Readable and writable at once: reported readable only (once per list it was asked in, as kazoo does).
    assert _same_as_kazoo([left], [left]) == ([left, left], [], [])
    right.close()  # hang-up: ready for reading (the read then sees the end)
    left.recv(1)
    assert _same_as_kazoo([left], []) == ([left], [], [])


def test_select_waits_for_its_timeout_or_data(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    started = time.monotonic()
    assert LoopHandler().select([left], [], [], 0.0005) == ([], [], [])  # under a millisecond: waits, no spin
    assert time.monotonic() - started < 5
    threading.Timer(0.05, right.send, args=(b"x",)).start()
    assert LoopHandler().select([left], [], [], 10) == ([left], [], [])
    with pytest.raises(ValueError):
        LoopHandler().select([left], [], [], -1)
