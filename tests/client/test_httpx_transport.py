"""The httpx transports against real local HTTP servers: resolution, balancing, retry of a dead instance on
another one with failure feedback, stickiness, pass-through."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from discovery import AsyncRegistry, Instance, Registry, Status, ValidationError
from discovery.client.balancers import ConsistentHash, PowerOfTwoChoices
from discovery.client.feedback import DownInstancePolicy
from discovery.client.httpx_transport import AsyncDiscoveryTransport, DiscoveryTransport, ServiceRouter
from tests.client.conftest import NamedHTTPServer, dead_ports
from tests.client.polling import wait_until

ServerFactory = Callable[[str], NamedHTTPServer]


@pytest.fixture
def registry(memory_url: str) -> Iterator[Registry]:
    with Registry.connect(memory_url) as registry:
        yield registry


def orders(number: int, port: int, **fields: object) -> Instance:
    return Instance("orders", f"orders-{number}", "127.0.0.1", port, **fields)  # type: ignore[arg-type]


def test_a_service_name_is_resolved_and_balanced(registry: Registry, http_servers: ServerFactory) -> None:
    one, two = http_servers("one"), http_servers("two")
    registry.register(orders(1, one.port))
    registry.register(orders(2, two.port))
    with httpx.Client(transport=DiscoveryTransport(registry)) as client:
        bodies = [client.get("http://orders/api/items").text for _ in range(4)]
    assert bodies == ["one orders", "two orders", "one orders", "two orders"]  # Host keeps the service name
    assert one.hits == two.hits == ["/api/items", "/api/items"]


def test_a_dead_instance_is_retried_elsewhere_reported_and_then_skipped(
    registry: Registry, http_servers: ServerFactory, dead_port: int
) -> None:
    live = http_servers("live")
    registry.register(orders(1, live.port))
    registry.register(orders(2, dead_port))
    transport = DiscoveryTransport(registry)
    with httpx.Client(transport=transport) as client:
        for _ in range(4):
            response = client.get("http://orders/x")
            assert response.status_code == 200 and response.text == "live orders"
        cache = transport.cache("orders")
        dead = next(i for i in cache.instances() if i.port == dead_port)
        assert transport.failures.is_down(dead)
        assert [i.id for i in cache.pickable()] == ["orders-1"]
        for _ in range(10):
            assert client.get("http://orders/x").status_code == 200
    assert len(live.hits) == 14


def test_every_instance_dead_gives_the_connect_error_after_bounded_attempts(registry: Registry) -> None:
    for number, port in enumerate(dead_ports(3)):
        registry.register(orders(number, port))
    transport = DiscoveryTransport(registry, attempts=2, failures=DownInstancePolicy(error_threshold=1))
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError):
        client.get("http://orders/x")
    assert len(transport.failures.down()) == 2  # two attempts, on two different instances, both reported


def test_no_registered_instance_is_a_typed_error(registry: Registry) -> None:
    from discovery.client.balancers import NoInstanceAvailableError

    with httpx.Client(transport=DiscoveryTransport(registry)) as client, pytest.raises(NoInstanceAvailableError):
        client.get("http://orders/x")


def test_a_draining_instance_gets_no_new_requests(registry: Registry, http_servers: ServerFactory) -> None:
    one, two = http_servers("one"), http_servers("two")
    first = registry.register(orders(1, one.port))
    registry.register(orders(2, two.port))
    transport = DiscoveryTransport(registry)
    with httpx.Client(transport=transport) as client:
        client.get("http://orders/")
        first.update(status=Status.DRAINING)
        wait_until(lambda: len(transport.cache("orders").instances()) == 1)
        before = len(one.hits)
        assert {client.get("http://orders/").text for _ in range(5)} == {"two orders"}
        assert len(one.hits) == before


def test_namespaced_hosts_and_pass_through(registry: Registry, http_servers: ServerFactory) -> None:
    staging, plain = http_servers("staging"), http_servers("plain")
    registry.register(Instance("orders", "orders-s", "127.0.0.1", staging.port, namespace="staging"))
    with httpx.Client(transport=DiscoveryTransport(registry, namespaces=("staging",))) as client:
        assert client.get("http://orders.staging/").text == "staging orders.staging"
        assert client.get(f"http://127.0.0.1:{plain.port}/").text == f"plain 127.0.0.1:{plain.port}"
        assert client.get(f"http://localhost:{plain.port}/").text == f"plain localhost:{plain.port}"


def test_router_rules() -> None:
    router = ServiceRouter(namespace="prod", namespaces=("staging",), passthrough=("localhost", "metadata"))
    assert router.resolve("orders") == ("prod", "orders")
    assert router.resolve("Orders.Staging") == ("staging", "orders")
    assert router.resolve("orders.elsewhere") is None
    assert router.resolve("metadata") is None
    assert router.resolve("10.0.0.1") is None
    assert router.resolve("::1") is None
    assert router.resolve("api.example.com") is None
    assert router.resolve("bad_name") is None
    with pytest.raises(ValidationError):
        ServiceRouter(namespace="Not Valid")


def test_a_bad_attempt_count_is_a_validation_error(registry: Registry) -> None:
    with pytest.raises(ValidationError):
        DiscoveryTransport(registry, attempts=0)


def test_consistent_hashing_by_a_header_is_sticky(registry: Registry, http_servers: ServerFactory) -> None:
    servers = [http_servers(f"s{n}") for n in range(3)]
    for n, server in enumerate(servers):
        registry.register(orders(n, server.port))
    transport = DiscoveryTransport(
        registry, balancers={"orders": ConsistentHash}, hash_key=lambda request: request.headers.get("x-user")
    )
    with httpx.Client(transport=transport) as client:
        for user in ("ann", "bob", "cyd", "dee"):
            answers = {client.get("http://orders/", headers={"x-user": user}).text for _ in range(3)}
            assert len(answers) == 1, (user, answers)


def test_requests_count_as_in_flight_until_the_response_is_closed(
    registry: Registry, http_servers: ServerFactory
) -> None:
    server = http_servers("one")
    registry.register(orders(1, server.port))
    balancer = PowerOfTwoChoices()
    transport = DiscoveryTransport(registry, balancers={"orders": lambda: balancer})
    with httpx.Client(transport=transport) as client:
        instance = registry.instances("orders")[0]
        with client.stream("GET", "http://orders/") as response:
            assert balancer.outstanding(instance) == 1
            assert response.read() == b"one orders"
        assert balancer.outstanding(instance) == 0


async def test_the_async_transport_retries_and_reports(
    memory_url: str, http_servers: ServerFactory, dead_port: int
) -> None:
    live = http_servers("live")
    async with AsyncRegistry.connect(memory_url) as registry:
        await registry.register(orders(1, live.port))
        await registry.register(orders(2, dead_port))
        transport = AsyncDiscoveryTransport(registry)
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(6):
                response = await client.get("http://orders/a")
                assert response.text == "live orders"
            cache = await transport.cache("orders")
            assert [i.id for i in cache.pickable()] == ["orders-1"]
        assert len(live.hits) == 6
        assert registry.cached_snapshot("orders") is None  # closing the client closed the cache
