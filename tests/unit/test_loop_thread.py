"""LoopThread.submit: functions handed to the loop without waiting run in order, before anything the same thread
hands over later, with one wake-up of the loop per burst; one that fails is reported and the rest still run."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from discovery.core.errors import ClosedError
from discovery.registry.loop_thread import LoopThread


async def _nothing() -> None:
    return None


@pytest.fixture
def loop_thread() -> Any:
    thread = LoopThread("test-loop")
    yield thread
    thread.stop()


def test_submitted_functions_run_in_order_and_before_a_later_call(loop_thread: LoopThread) -> None:
    ran: list[int] = []
    for n in range(2_000):
        loop_thread.submit(lambda n=n: ran.append(n))  # type: ignore[misc]
    loop_thread.run(_nothing())
    assert ran == list(range(2_000))


def test_a_burst_of_submissions_wakes_the_loop_once(
    loop_thread: LoopThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(10)

    loop_thread.submit(hold)
    assert held.wait(10)  # the loop is busy: what follows is one burst
    wake_ups: list[object] = []
    schedule = loop_thread.loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        wake_ups.append(callback)
        return schedule(callback, *args)

    monkeypatch.setattr(loop_thread.loop, "call_soon_threadsafe", counting)
    ran: list[int] = []
    for n in range(1_000):
        loop_thread.submit(lambda n=n: ran.append(n))  # type: ignore[misc]
    release.set()
    loop_thread.run(_nothing())
    assert ran == list(range(1_000))
    # One for the burst, one for run(); before, one per submitted function (1 001).
    assert len(wake_ups) <= 2, len(wake_ups)


def test_submissions_from_many_threads_each_keep_their_order(loop_thread: LoopThread) -> None:
    ran: dict[int, list[int]] = {t: [] for t in range(4)}
    seen_by_own_call: dict[int, int] = {}

    def submitter(t: int) -> None:
        for n in range(500):
            loop_thread.submit(lambda n=n: ran[t].append(n))  # type: ignore[misc]
        loop_thread.run(_nothing())
        seen_by_own_call[t] = len(ran[t])  # everything this thread submitted ran before its call

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(ran[t] == list(range(500)) for t in range(4))
    assert seen_by_own_call == {t: 500 for t in range(4)}


def test_a_failing_function_is_reported_and_the_rest_still_run(loop_thread: LoopThread) -> None:
    reported: list[dict[str, Any]] = []
    loop_thread.loop.set_exception_handler(lambda loop, context: reported.append(context))
    ran: list[str] = []

    def fail() -> None:
        raise ValueError("boom")

    loop_thread.submit(lambda: ran.append("before"))
    loop_thread.submit(fail)
    loop_thread.submit(lambda: ran.append("after"))
    loop_thread.run(_nothing())
    assert ran == ["before", "after"]
    assert [type(context["exception"]) for context in reported] == [ValueError]


def test_submitting_to_a_stopped_loop_thread_raises_closed_error() -> None:
    thread = LoopThread("test-loop")
    thread.stop()
    with pytest.raises(ClosedError):
        thread.submit(lambda: None)
