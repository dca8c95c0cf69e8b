"""The change feed's index rules, which watches it wakes, and stale handling, against a scripted stand-in for the
agent (``/v1/health/state/any`` answers from a script; ``/v1/health/service`` reads from a table)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from discovery.core.errors import BackendUnavailableError
from discovery.core.models import Instance
from discovery_consul import layout, watch
from discovery_consul.watch import ChangeFeed, ServiceWatch
from tests.backends.test_consul_records import live_entry

WEB = Instance("web", "w1", "127.0.0.1", 80)
API = Instance("api", "a1", "127.0.0.1", 81)


def checks(instance: Instance, modified: int) -> list[dict[str, Any]]:
    """The ``/v1/health/state/any`` items of an instance's two checks (as ``live_entry`` has them)."""
    service_id = layout.consul_service_id(instance, None)
    return [
        {"Node": "n1", "CheckID": check_id, "ServiceName": instance.service, "ServiceID": service_id,
         "ModifyIndex": modified}
        for check_id in (layout.liveness_check_id(service_id), layout.status_check_id(service_id))
    ]


NODE_CHECK = {"Node": "n1", "CheckID": "serfHealth", "ServiceName": "", "ServiceID": "", "ModifyIndex": 2}


class ScriptedAgent:
    """Feed answers from a script of (index, checks) or exceptions; service reads from ``services``."""

    def __init__(self, script: list[tuple[int, list[dict[str, Any]]] | Exception]) -> None:
        self.script = script
        self.asked: list[int] = []
        self.services: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self.reads: Counter[str] = Counter()
        self.parked: Counter[str] = Counter()
        self.end_wait: set[str] = set()
        self.exhausted = asyncio.Event()
        self.next_step = asyncio.Event()

    async def health_state(self, index: int = 0, wait: float = 0.0, filter_expr: str | None = None) -> Any:
        self.asked.append(index)
        while not self.script:  # block like a blocking query with nothing new, until the test adds a step
            self.exhausted.set()
            await asyncio.sleep(0.01)
        if index:  # a blocking query: one step of the script per release
            await self.next_step.wait()
            self.next_step.clear()
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    async def health_service(self, service: str, tag: str | None, index: int = 0, wait: float = 0.0) -> Any:
        answer = self.services.get(service, (1, []))
        if index:
            self.parked[service] += 1
            while self.services.get(service, (1, []))[0] <= index:  # a blocking query: parked until it changes
                if service in self.end_wait:  # ... or its wait ends
                    self.end_wait.discard(service)
                    break
                await asyncio.sleep(0.01)
            return self.services[service]
        self.reads[service] += 1
        return answer


class Watched:
    """A ServiceWatch on the scripted agent, read at once by a task, and the snapshots it yielded."""

    def __init__(self, agent: ScriptedAgent, feed: ChangeFeed, service: str) -> None:
        self.watch = ServiceWatch(agent, feed, None, "default", service, 60.0, lambda: False)  # type: ignore[arg-type]
        self.seen: list[tuple[frozenset[str], bool]] = []
        self.collector = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for snapshot in self.watch:
            self.seen.append((snapshot.ids(), snapshot.stale))

    async def stop(self) -> None:
        self.collector.cancel()
        await asyncio.gather(self.collector, return_exceptions=True)
        await self.watch.aclose()


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "HOT_SLOTS", 0)  # every watch follows the feed, unless a test says otherwise
    monkeypatch.setattr(watch, "RETRY_WAIT", lambda state: 0.01)
    monkeypatch.setattr(watch, "QUERY_RATE", 1000.0)
    monkeypatch.setattr(watch, "FEED_BUSY_FACTOR", 0.0)


async def settle(agent: ScriptedAgent, steps: int = 1) -> None:
    """Release ``steps`` blocking answers of the script (0: only the first, non-blocking one) and let everything
    they wake run."""
    await asyncio.sleep(0.05)
    for _ in range(steps):
        agent.next_step.set()
        await asyncio.sleep(0.05)


async def test_feed_index_is_kept_at_least_one_and_reset_when_it_goes_backwards() -> None:
    agent = ScriptedAgent([(0, []), (7, []), (3, []), (4, [])])
    feed = ChangeFeed(agent, wait=60.0)  # type: ignore[arg-type]
    web = Watched(agent, feed, "web")
    await settle(agent, 3)
    await asyncio.wait_for(agent.exhausted.wait(), 5)
    # 0 → first query; index 0 answered → next index 1 (never 0); 7 → 7; 3 < 7 → reset to 0; then 4.
    assert agent.asked == [0, 1, 7, 0, 4]
    await web.stop()


async def test_only_the_watch_whose_checks_changed_reads_again() -> None:
    agent = ScriptedAgent([
        (10, [NODE_CHECK, *checks(WEB, 5), *checks(API, 6)]),
        (11, [NODE_CHECK, *checks(WEB, 11), *checks(API, 6)]),  # web's checks changed at 11
        (12, [NODE_CHECK, *checks(API, 6)]),  # web's checks are gone (deregistered)
    ])
    agent.services = {"web": (10, [live_entry(WEB)]), "api": (10, [live_entry(API)])}
    feed = ChangeFeed(agent, wait=60.0)  # type: ignore[arg-type]
    web, api = Watched(agent, feed, "web"), Watched(agent, feed, "api")
    await settle(agent, 0)
    assert agent.reads == Counter({"web": 1, "api": 1})  # the first answer holds nothing newer than the reads
    agent.services["web"] = (11, [live_entry(WEB)])
    await settle(agent)
    assert agent.reads == Counter({"web": 2, "api": 1})
    agent.services["web"] = (12, [])
    await settle(agent)
    assert agent.reads == Counter({"web": 3, "api": 1})
    assert web.seen[-1] == (frozenset(), False)
    assert api.seen == [(frozenset({"a1"}), False)]
    await web.stop()
    await api.stop()


class GatedAgent(ScriptedAgent):
    """Plain service reads wait until ``reads_open`` is set: the feed answers while they are in flight."""

    def __init__(self, script: list[tuple[int, list[dict[str, Any]]] | Exception]) -> None:
        super().__init__(script)
        self.reads_open = asyncio.Event()
        self.after_first_read: dict[str, tuple[int, list[dict[str, Any]]]] = {}  # what a service's reads then see

    async def health_service(self, service: str, tag: str | None, index: int = 0, wait: float = 0.0) -> Any:
        if not index:
            await self.reads_open.wait()
        answer = await super().health_service(service, tag, index, wait)
        if service in self.after_first_read:
            self.services[service] = self.after_first_read.pop(service)
        return answer


async def test_a_feed_answer_during_the_first_reads_does_not_make_every_watch_read_twice() -> None:
    # At start-up the feed's first answer lands while the watches' first reads are in flight; it holds nothing
    # newer than what those reads return, so no watch reads again (with 5 000 watched services it was 5 000
    # wasted reads right after the initial sync).
    agent = GatedAgent([(10, [NODE_CHECK, *checks(WEB, 5), *checks(API, 6)])])
    agent.services = {"web": (10, [live_entry(WEB)]), "api": (10, [live_entry(API)])}
    feed = ChangeFeed(agent, wait=60.0)  # type: ignore[arg-type]
    web, api = Watched(agent, feed, "web"), Watched(agent, feed, "api")
    await asyncio.wait_for(agent.exhausted.wait(), 5)  # the feed answered and is blocked on its next query
    agent.reads_open.set()
    await settle(agent, 0)
    assert agent.reads == Counter({"web": 1, "api": 1})
    await web.stop()
    await api.stop()


async def test_a_read_older_than_the_feeds_answer_reads_again_when_it_lands() -> None:
    # The feed saw web change at 11 while web's read (answering at index 10) was in flight: once that read lands,
    # web reads again; api's read saw everything the feed knows.
    agent = GatedAgent([(12, [NODE_CHECK, *checks(WEB, 11), *checks(API, 6)])])
    agent.services = {"web": (10, [live_entry(WEB)]), "api": (12, [live_entry(API)])}
    agent.after_first_read["web"] = (12, [live_entry(WEB)])
    feed = ChangeFeed(agent, wait=60.0)  # type: ignore[arg-type]
    web, api = Watched(agent, feed, "web"), Watched(agent, feed, "api")
    await asyncio.wait_for(agent.exhausted.wait(), 5)
    agent.reads_open.set()
    await settle(agent, 0)
    assert agent.reads == Counter({"web": 2, "api": 1})
    await web.stop()
    await api.stop()


async def test_a_change_without_a_changed_check_sweeps_only_watches_with_foreign_or_no_instances() -> None:
    agent = ScriptedAgent([(10, [NODE_CHECK, *checks(WEB, 5)]), (11, [NODE_CHECK, *checks(WEB, 5)]),
                           (12, [NODE_CHECK, *checks(WEB, 5)])])
    agent.services = {"web": (10, [live_entry(WEB)]), "empty": (10, [])}
    feed = ChangeFeed(agent, wait=60.0)  # type: ignore[arg-type]
    web, empty = Watched(agent, feed, "web"), Watched(agent, feed, "empty")
    await settle(agent, 0)
    reads_before = agent.reads.copy()
    await settle(agent)  # index 10 → 11 with no check changed: a foreign Meta rewrite, say
    assert agent.reads["empty"] == reads_before["empty"] + 1
    assert agent.reads["web"] == reads_before["web"], "all-ours watches are told by their checks"
    await settle(agent)  # again within SWEEP_INTERVAL: no second sweep
    assert agent.reads["empty"] == reads_before["empty"] + 1
    await web.stop()
    await empty.stop()


async def test_feed_errors_publish_the_last_set_stale_then_every_watch_reads_fresh() -> None:
    down = BackendUnavailableError("agent down")
    agent = ScriptedAgent([(5, checks(WEB, 5)), down, down, (9, checks(WEB, 5))])
    agent.services = {"web": (5, [live_entry(WEB)])}
    feed = ChangeFeed(agent, wait=60.0)  # type: ignore[arg-type]
    web = Watched(agent, feed, "web")
    await settle(agent, 1)
    await asyncio.wait_for(agent.exhausted.wait(), 5)
    await asyncio.sleep(0.05)
    assert agent.asked[:4] == [0, 5, 0, 0]  # after a failure: a re-list, not the old index
    assert (frozenset({"w1"}), True) in web.seen
    assert web.seen[-1] == (frozenset({"w1"}), False)
    assert web.seen.count((frozenset({"w1"}), True)) == 1, "one stale snapshot per outage, not one per retry"
    await web.stop()


class FlakyReadsAgent(ScriptedAgent):
    """A scripted agent whose service reads fail while ``reads_down`` is set."""

    def __init__(self, script: list[tuple[int, list[dict[str, Any]]] | Exception]) -> None:
        super().__init__(script)
        self.reads_down = False

    async def health_service(self, service: str, tag: str | None, index: int = 0, wait: float = 0.0) -> Any:
        if self.reads_down:
            raise BackendUnavailableError("agent down")
        return await super().health_service(service, tag, index, wait)


async def test_a_feed_error_told_while_a_watch_retried_its_read_does_not_leave_it_stale() -> None:
    # web's read fails (the agent is down) and retries; meanwhile the feed fails and recovers, which wakes web.
    # The retry that succeeds is fresh, and the feed's error from before it must not mark it stale afterwards.
    down = BackendUnavailableError("agent down")
    agent = FlakyReadsAgent([(5, checks(WEB, 5)), (6, checks(WEB, 6)), down, (9, checks(WEB, 6))])
    agent.services = {"web": (5, [live_entry(WEB)])}
    feed = ChangeFeed(agent, wait=60.0)  # type: ignore[arg-type]
    web = Watched(agent, feed, "web")
    await settle(agent, 0)
    assert web.seen == [(frozenset({"w1"}), False)]
    agent.reads_down = True
    await settle(agent, 1)  # web's checks changed at 6: web reads, fails, retries
    assert web.seen[-1] == (frozenset({"w1"}), True)
    await settle(agent, 1)  # the feed fails, re-lists at once and recovers (index 9): every watch is woken
    await asyncio.wait_for(agent.exhausted.wait(), 5)
    agent.services = {"web": (9, [live_entry(WEB)])}
    agent.reads_down = False
    for _ in range(100):  # until web's retry has read (poll with a deadline)
        if web.seen[-1] == (frozenset({"w1"}), False):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # room for a late stale snapshot, which is what failed before
    assert web.seen[-1] == (frozenset({"w1"}), False), web.seen
    await web.stop()


async def test_a_changed_service_takes_the_hot_slot_of_the_least_recently_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watch, "HOT_SLOTS", 1)
    agent = ScriptedAgent([
        (10, [NODE_CHECK, *checks(API, 6)]),
        (11, [NODE_CHECK, *checks(API, 11)]),  # api changed at 11: it takes web's slot
    ])
    agent.services = {"web": (10, [live_entry(WEB)]), "api": (10, [live_entry(API)])}
    feed = ChangeFeed(agent, wait=60.0)  # type: ignore[arg-type]
    web = Watched(agent, feed, "web")
    await settle(agent, 0)
    assert agent.parked == Counter({"web": 1}) and agent.asked == []  # one service, its own query, no feed
    api = Watched(agent, feed, "api")
    await settle(agent, 0)
    assert agent.asked[0] == 0  # api is cold: the feed runs, selecting it
    agent.services["api"] = (11, [live_entry(API), live_entry(Instance("api", "a2", "127.0.0.1", 82))])
    await settle(agent)
    assert api.seen[-1] == (frozenset({"a1", "a2"}), False)
    assert agent.parked["api"] == 1, "the service that changed has its own query now"
    assert agent.asked.count(0) == 2, "web went cold: the feed re-lists to select it"
    agent.services["web"] = (12, [])  # web's change now comes through the feed's re-list
    agent.script.append((12, [NODE_CHECK, *checks(API, 11)]))
    await settle(agent)
    assert web.seen[-1] == (frozenset(), False)
    await web.stop()
    await api.stop()


async def test_a_hot_watch_that_gives_its_slot_up_is_followed_by_the_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "HOT_SLOTS", 1)
    agent = ScriptedAgent([(20, [NODE_CHECK, *checks(WEB, 5)]), (21, [NODE_CHECK, *checks(WEB, 21)])])
    agent.services = {"web": (10, [live_entry(WEB)])}
    feed = ChangeFeed(agent, wait=60.0)  # type: ignore[arg-type]
    web = Watched(agent, feed, "web")
    await settle(agent, 0)
    assert agent.parked == Counter({"web": 1}) and agent.asked == []
    agent.end_wait.add("web")  # its blocking query's whole wait passes without a change: it goes cold
    await settle(agent, 0)
    assert agent.asked[:1] == [0], "a watch that went cold is followed by the feed"
    agent.services["web"] = (21, [])
    await settle(agent)
    assert web.seen[-1] == (frozenset(), False)
    await web.stop()
