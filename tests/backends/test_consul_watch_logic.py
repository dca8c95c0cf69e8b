"""The blocking-query loop's index rules and stale handling, against a scripted stand-in for the agent."""

from __future__ import annotations

import asyncio
from typing import Any

from discovery.core.errors import BackendUnavailableError
from discovery.core.models import Instance
from discovery_consul.watch import ServiceWatch
from tests.backends.test_consul_records import live_entry

INSTANCE = Instance("web", "w1", "127.0.0.1", 80)


class ScriptedAgent:
    """Answers ``health_service`` from a script of (index, entries) or exceptions; records the indexes asked."""

    def __init__(self, script: list[tuple[int, list[dict[str, Any]]] | Exception]) -> None:
        self.script = script
        self.asked: list[int] = []
        self.exhausted = asyncio.Event()

    async def health_service(self, service: str, tag: str, index: int = 0, wait: float = 0.0) -> Any:
        self.asked.append(index)
        if not self.script:
            self.exhausted.set()
            await asyncio.Event().wait()  # block like a blocking query with nothing new
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


async def run_script(agent: ScriptedAgent) -> list[tuple[frozenset[str], bool]]:
    watch = ServiceWatch(agent, None, "default", "web", 60.0, lambda: False)  # type: ignore[arg-type]
    seen: list[tuple[frozenset[str], bool]] = []

    async def collect() -> None:
        async for snapshot in watch:
            seen.append((snapshot.ids(), snapshot.stale))

    collector = asyncio.create_task(collect())
    # The stream asks the agent again only after its consumer took the last snapshot, so once the script is
    # exhausted every answer has been delivered.
    await asyncio.wait_for(agent.exhausted.wait(), 30)
    collector.cancel()
    await asyncio.gather(collector, return_exceptions=True)
    return seen


async def test_index_is_kept_at_least_one_and_reset_when_it_goes_backwards() -> None:
    entry = live_entry(INSTANCE)
    agent = ScriptedAgent([(0, []), (7, [entry]), (3, [entry]), (4, [entry])])
    seen = await run_script(agent)
    # 0 → first query; index 0 answered → next index 1 (never 0); 7 → 7; 3 < 7 → reset to 0; then 4.
    assert agent.asked == [0, 1, 7, 0, 4]
    assert seen[-1] == (frozenset({"w1"}), False)


async def test_errors_publish_the_last_set_stale_then_relist_fresh() -> None:
    entry = live_entry(INSTANCE)
    down = BackendUnavailableError("agent down")
    agent = ScriptedAgent([(5, [entry]), down, down, (9, [entry])])
    seen = await run_script(agent)
    assert agent.asked == [0, 5, 0, 0, 9]  # after a failure: a re-list, not the old index
    assert seen[0] == (frozenset({"w1"}), False)
    assert (frozenset({"w1"}), True) in seen
    assert seen[-1] == (frozenset({"w1"}), False)
    assert seen.count((frozenset({"w1"}), True)) == 1, "one stale snapshot per outage, not one per retry"
