"""Status and drain end to end, on the memory backend and on real ZooKeeper, etcd and Consul servers.

One registry registers (the "server" process), another one follows the service through a ServiceCache (the
"client" process); they share only the backend.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from discovery import Instance, Registry, Status
from discovery.client.balancers import NoInstanceAvailableError
from discovery.client.cache import ServiceCache
from discovery.client.lifecycle import drain
from tests.client.conftest import SHORT_TTL
from tests.client.polling import CONVERGENCE_TIMEOUT, wait_until


def ids(instances: tuple[Instance, ...]) -> set[str]:
    return {i.id for i in instances}


@pytest.fixture
def two_registries(backend_url: str) -> Iterator[tuple[Registry, Registry]]:
    with Registry.connect(backend_url) as server_side, Registry.connect(backend_url) as client_side:
        yield server_side, client_side


def test_draining_takes_an_instance_out_of_picks_and_drain_deregisters_it(
    two_registries: tuple[Registry, Registry],
) -> None:
    server_side, client_side = two_registries
    first = server_side.register(Instance("orders", "orders-1", "127.0.0.1", 20001), ttl=SHORT_TTL)
    second = server_side.register(Instance("orders", "orders-2", "127.0.0.1", 20002), ttl=SHORT_TTL)
    with (
        ServiceCache.open(client_side, "orders") as cache,
        ServiceCache.open(client_side, "orders", statuses=None) as observer,
    ):
        wait_until(lambda: ids(cache.instances()) == {"orders-1", "orders-2"}, what="both instances seen")

        first.update(status=Status.DRAINING)
        wait_until(lambda: ids(cache.instances()) == {"orders-2"}, what="DRAINING instance leaves the picks")
        assert {cache.pick().id for _ in range(20)} == {"orders-2"}
        assert observer.snapshot is not None
        wait_until(lambda: ids(observer.instances()) == {"orders-1", "orders-2"}, what="observer sees both")

        second_statuses: list[Status | None] = []
        lock = threading.Lock()

        def record(seen: ServiceCache) -> None:
            snapshot = seen.snapshot
            member = None if snapshot is None else snapshot.get("orders-2")
            with lock:
                second_statuses.append(None if member is None else member.status)

        observer.on_update(record)
        result = drain(
            second, timeout=CONVERGENCE_TIMEOUT, idle=lambda: "orders-2" not in ids(cache.instances()), settle=0
        )
        assert result.idle, "clients never stopped picking the drained instance"
        assert second.active is False
        wait_until(lambda: "orders-2" not in ids(observer.instances()), what="drained instance deregistered")
        with lock:
            sequence = [s for n, s in enumerate(second_statuses) if n == 0 or s != second_statuses[n - 1]]
        assert sequence[-2:] == [Status.DRAINING, None], sequence
        with pytest.raises(NoInstanceAvailableError):
            cache.pick()


def test_draining_back_to_up_returns_an_instance_to_the_picks(two_registries: tuple[Registry, Registry]) -> None:
    server_side, client_side = two_registries
    registration = server_side.register(Instance("billing", "billing-1", "127.0.0.1", 20011), ttl=SHORT_TTL)
    with ServiceCache.open(client_side, "billing") as cache:
        wait_until(lambda: ids(cache.instances()) == {"billing-1"}, what="instance seen")
        registration.update(status=Status.DRAINING)
        wait_until(lambda: cache.instances() == (), what="drained")
        registration.update(status=Status.UP)
        wait_until(lambda: ids(cache.instances()) == {"billing-1"}, what="back up")
        assert cache.pick().id == "billing-1"
