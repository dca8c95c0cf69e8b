"""The fault suite, quick profile: each fault once against ZooKeeper, etcd and Consul (real servers).

``benchmarks/faults.py`` runs the same trials in the full profile (>= 20 each) and prints the table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.faults.scenarios import FAULTS, PROFILES, FaultServers, run_fault
from tests.faults.targets import BACKENDS, Target
from tests.harness.pytest_plugin import artifacts_dir, unavailable
from tests.harness.servers import ServerError

pytestmark = [pytest.mark.servers, pytest.mark.slow]

log = logging.getLogger(__name__)


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
    try:
        result = await run_fault(fault, Target(backend), fault_servers, PROFILES["quick"])
    except ServerError as error:
        unavailable(f"{backend} servers for {fault}: {error}")
    log.info("%s", result.describe())
    assert result.ok, result.describe()
