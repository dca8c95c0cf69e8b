"""The fault suite, quick profile: each fault once against ZooKeeper, etcd and Consul (real servers).

``benchmarks/faults.py`` runs the same trials in the full profile (>= 20 each) and prints the table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from tests.faults.scenarios import FAULTS, PROFILES, FaultServers, run_fault
from tests.faults.targets import BACKENDS, Target
from tests.harness.pytest_plugin import artifacts_dir, unavailable
from tests.harness.servers import ServerError

pytestmark = [pytest.mark.servers, pytest.mark.slow]

log = logging.getLogger(__name__)

#: Seconds a trial may take before it fails with the stack of every task (pytest-timeout's own 300 s dumps only
#: the threads, which shows an idle event loop and not what the trial was waiting for).
TRIAL_LIMIT = 240.0


def _task_stacks() -> str:
    stacks = []
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=12)
        where = " <- ".join(f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno} {f.f_code.co_name}"
                            for f in reversed(frames))
        stacks.append(f"{task.get_name()}: {where or 'not started'}")
    return "\n".join(sorted(stacks))


@pytest.fixture(scope="module")
def fault_servers(server_provider: str) -> Iterator[FaultServers]:
    if server_provider == "external":
        unavailable("the fault suite kills and restarts servers: needs --servers=process or --servers=container")
    servers = FaultServers(server_provider, artifacts_dir())
    try:
        yield servers
    finally:
        servers.close()


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("backend", BACKENDS)
async def test_fault(backend: str, fault: str, fault_servers: FaultServers) -> None:
    # A watchdog, not a timeout around the call: it records where every task waits before cancelling the trial.
    this = asyncio.current_task()
    assert this is not None
    stalled: list[str] = []

    def stall() -> None:
        stalled.append(_task_stacks())
        this.cancel()

    watchdog = asyncio.get_running_loop().call_later(TRIAL_LIMIT, stall)
    try:
        result = await run_fault(fault, Target(backend), fault_servers, PROFILES["quick"])
    except asyncio.CancelledError:
        if not stalled:
            raise
        pytest.fail(f"{backend}/{fault} took over {TRIAL_LIMIT:g} s; its tasks were at:\n{stalled[0]}")
    except ServerError as error:
        unavailable(f"{backend} servers for {fault}: {error}")
    finally:
        watchdog.cancel()
    log.info("%s", result.describe())
    assert result.ok, result.describe()
