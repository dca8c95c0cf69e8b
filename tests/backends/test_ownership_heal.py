"""Ownership across an outage: a registrant cut off long enough to lose its registration, whose instance id another
registrant takes meanwhile, must give the id up when it is back, not heal over the newcomer (every networked
backend; docs/decisions/session-ownership.md).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from discovery import AsyncRegistration, AsyncRegistry, Instance, LostReason, RegistrationState
from tests.client.conftest import SHORT_TTL
from tests.harness import ServerHandle
from tests.harness.relay import Relay
from tests.harness.specs import ZK_TICK_MS

pytestmark = pytest.mark.servers

CONVERGENCE = 15.0


def url_for(kind: str, address: str, scope: str) -> str:
    if kind == "zookeeper":
        return f"zookeeper://{address}/{scope}?session_timeout={SHORT_TTL}&tick={ZK_TICK_MS / 1000}"
    if kind == "etcd":
        return f"etcd://{address}/{scope}?ttl={SHORT_TTL}"
    return f"consul://{address}/{scope}"


@pytest_asyncio.fixture
async def relay_for(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, ServerHandle, Relay]]:
    kind: str = request.param
    server: ServerHandle = request.getfixturevalue(f"{kind}_server")
    relay = await asyncio.to_thread(Relay(server.host, server.port).start)
    try:
        yield kind, server, relay
    finally:
        await asyncio.to_thread(relay.close)


@pytest.mark.parametrize("relay_for", ["zookeeper", "etcd", "consul"], indirect=True)
async def test_a_registrant_back_from_an_outage_gives_up_an_id_taken_meanwhile(
    relay_for: tuple[str, ServerHandle, Relay],
) -> None:
    kind, server, relay = relay_for
    scope = f"heal-{uuid.uuid4().hex[:12]}"
    direct = f"{server.host}:{server.port}"
    old = Instance("healed", "h1", "127.0.0.1", 1001, labels={"gen": "old"})
    new = Instance("healed", "h1", "127.0.0.1", 1002, labels={"gen": "new"})
    cut_off = await AsyncRegistry.connect(url_for(kind, relay.address, scope))
    newcomer = await AsyncRegistry.connect(url_for(kind, direct, scope))
    try:
        registration = await cut_off.register(old, ttl=SHORT_TTL)
        bound = registration.detection_bound + 1.0
        async with newcomer.watch("healed") as watch:
            await watch.until(lambda s: s.get("h1") == old, CONVERGENCE)
            await asyncio.to_thread(relay.blackhole)
            await watch.until(lambda s: "h1" not in s.ids(), bound + CONVERGENCE)  # the server forgot it
            taken = await newcomer.register(new, ttl=SHORT_TTL)
            await watch.until(lambda s: s.get("h1") == new, CONVERGENCE)
            await asyncio.to_thread(relay.pass_through)
            await _taken_over(registration, bound + CONVERGENCE)
            with pytest.raises(TimeoutError):  # the healed registrant never writes the id again
                await watch.until(lambda s: s.get("h1") != new, bound)
        assert taken.state is RegistrationState.REGISTERED
        assert await newcomer.instances("healed") == (new,)
        await cut_off.close()
        assert await newcomer.instances("healed") == (new,)  # closing the old owner removes nothing either
    finally:
        await cut_off.close()
        await newcomer.close()


async def _taken_over(registration: AsyncRegistration, timeout: float) -> None:
    """Poll (with a deadline) until the registration says it was taken over."""
    async with asyncio.timeout(timeout):
        while registration.lost_reason is not LostReason.TAKEN_OVER:
            await asyncio.sleep(0.05)
