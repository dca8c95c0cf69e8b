"""Issue 18, item 3: the client API fails early and clearly.

One way to pass a balancer everywhere (an instance or a factory, checked at construction); the wrong registry
type refused at once with a TypeError naming the right one; a TTL below the backend's minimum refused the same
way in register() and in the URL; registering a held id again returns the same handle; the instance behind
every transport request (and every failed connect) is named.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, cast

import httpx
import pytest

from discovery import (
    AsyncHealthCheck,
    AsyncRegistry,
    ConfigurationError,
    HealthCheck,
    Instance,
    RegistrationState,
    Registry,
    RoundRobin,
    ServiceCache,
    ValidationError,
    WeightedRoundRobin,
    ZoneAware,
    drain,
    drain_async,
)
from discovery.client.asgi import ServiceLifespan
from discovery.client.httpx_transport import (
    INSTANCE_EXTENSION,
    AsyncDiscoveryTransport,
    DiscoveryTransport,
    failed_instance,
)
from discovery.services.catalog import ServiceCatalog
from discovery.services.proxy import ServiceProxy
from tests.client.conftest import NamedHTTPServer, dead_ports


@pytest.fixture
def registry(memory_url: str) -> Iterator[Registry]:
    with Registry.connect(memory_url) as registry:
        yield registry


def web(number: int, port: int = 8080) -> Instance:
    return Instance("web", f"web-{number}", "127.0.0.1", port)


# -- one way to pass a balancer ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", [RoundRobin(), RoundRobin, WeightedRoundRobin, lambda: ZoneAware("eu-1a")], ids=["instance", "class",
                                                                                              "class2", "lambda"]
)
def test_a_balancer_is_an_instance_or_a_factory_everywhere(registry: Registry, spec: Any) -> None:
    registry.register(web(1))
    with ServiceCache.open(registry, "web", balancer=spec) as cache:
        assert cache.pick().id == "web-1"
    transport = DiscoveryTransport(registry, balancer=spec, balancers={"web": spec})
    transport.close()
    ServiceProxy(cast(ServiceCatalog, None), balancer=spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("round-robin", "must be a balancer .* got str"),
        (42, "must be a balancer .* got int"),
        (ZoneAware, "factory ZoneAware cannot be called without arguments"),
        (lambda: "not a balancer", "made str, which has no pick"),
    ],
    ids=["str", "int", "class-needing-arguments", "factory-of-junk"],
)
def test_a_wrong_balancer_is_a_type_error_at_construction(registry: Registry, spec: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        ServiceCache("web", balancer=spec)
    with pytest.raises(TypeError, match=message):
        DiscoveryTransport(registry, balancer=spec)
    with pytest.raises(TypeError, match=r"balancers\['web'\].*" + message):
        DiscoveryTransport(registry, balancers={"web": spec})
    with pytest.raises(TypeError, match=message):
        ServiceProxy(cast(ServiceCatalog, None), balancer=spec)


def test_an_instance_given_to_a_transport_is_shared_and_a_factory_makes_one_per_service(registry: Registry) -> None:
    shared = RoundRobin()
    transport = DiscoveryTransport(registry, balancer=shared)
    assert transport.router.balancer_for(("default", "a")) is shared
    assert transport.router.balancer_for(("default", "b")) is shared
    per_service = DiscoveryTransport(registry, balancer=RoundRobin)
    assert per_service.router.balancer_for(("default", "a")) is not per_service.router.balancer_for(("default", "b"))


def test_the_proxy_keeps_its_old_argument_name_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="balancer="):
        ServiceProxy(cast(ServiceCatalog, None), balancer_factory=RoundRobin)


# -- the wrong registry type ---------------------------------------------------------------------------------------


def test_an_async_registry_where_a_blocking_one_is_needed_is_refused_at_once(memory_url: str) -> None:
    async def scenario() -> None:
        async with AsyncRegistry.connect(memory_url) as async_registry:
            registration = await async_registry.register(web(1))
            with pytest.raises(TypeError, match=r"ServiceCache.open\(\) needs a blocking .*open_async"):
                ServiceCache.open(async_registry, "web")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"DiscoveryTransport needs a blocking .*AsyncDiscoveryTransport"):
                DiscoveryTransport(async_registry)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"drain\(\) needs the Registration .*drain_async"):
                drain(registration)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"HealthCheck needs the Registration .*AsyncHealthCheck"):
                HealthCheck(registration, lambda: True)  # type: ignore[arg-type]

    asyncio.run(scenario())


def test_a_blocking_registry_where_an_async_one_is_needed_is_refused_at_once(registry: Registry) -> None:
    registration = registry.register(web(1))

    async def scenario() -> None:
        with pytest.raises(TypeError, match=r"ServiceCache.open_async\(\) needs a discovery.AsyncRegistry.*open\("):
            await ServiceCache.open_async(registry, "web")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"drain_async\(\) needs the AsyncRegistration .*use drain\(\)"):
            await drain_async(registration)  # type: ignore[arg-type]

    asyncio.run(scenario())
    with pytest.raises(TypeError, match=r"AsyncDiscoveryTransport needs a discovery.AsyncRegistry.*DiscoveryTransport"):
        AsyncDiscoveryTransport(registry)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"ServiceLifespan.*needs a discovery.AsyncRegistry"):
        ServiceLifespan(web(1), registry=registry)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncHealthCheck needs the AsyncRegistration"):
        AsyncHealthCheck(registration, lambda: True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"needs a discovery\.Registry, got str"):
        ServiceCache.open("memory://", "web")  # type: ignore[arg-type]


# -- TTL below the minimum: an error in register() and in the URL alike ---------------------------------------


def test_a_ttl_below_the_minimum_is_an_error_in_register_and_in_the_url(memory_url: str) -> None:
    with Registry.connect(memory_url) as registry:
        minimum = registry.capabilities.min_ttl
        with pytest.raises(ValidationError, match=f"below the memory backend's minimum of {minimum:g} s"):
            registry.register(web(1), ttl=minimum / 10)
        assert registry.instances("web", statuses=None) == ()
        assert registry.register(web(1), ttl=minimum).ttl == minimum
    with pytest.raises(ConfigurationError, match=rf"ttl={minimum / 10:g} is outside \[{minimum:g}"):
        Registry.connect(f"{memory_url}?ttl={minimum / 10:g}")


# -- registering a held id again --------------------------------------------------------------------------------


def test_registering_a_held_id_again_returns_the_same_handle_rewritten(registry: Registry) -> None:
    first = registry.register(web(1, 8080))
    again = registry.register(web(1, 9090))
    assert again is first
    assert first.state is RegistrationState.REGISTERED and first.active
    assert [i.port for i in registry.instances("web")] == [9090]
    with pytest.raises(ValidationError, match=r"already registered with a .* TTL; deregister it first"):
        registry.register(web(1), ttl=first.ttl * 2)
    first.deregister()
    fresh = registry.register(web(1))
    assert fresh is not first and fresh.active and not first.active


# -- which instance served a transport request ----------------------------------------------------------------


def test_the_chosen_instance_is_in_the_response_and_in_a_connect_error(
    registry: Registry, http_servers: Callable[[str], NamedHTTPServer]
) -> None:
    live = http_servers("live")
    registry.register(Instance("orders", "orders-1", "127.0.0.1", live.port))
    with httpx.Client(transport=DiscoveryTransport(registry)) as client:
        response = client.get("http://orders/")
        assert response.extensions[INSTANCE_EXTENSION].id == "orders-1"
        assert response.extensions["discovery.attempts"] == 1

    (dead,) = dead_ports(1)
    registry.register(Instance("billing", "billing-7", "127.0.0.1", dead))
    with httpx.Client(transport=DiscoveryTransport(registry, attempts=1)) as client, pytest.raises(
        httpx.ConnectError
    ) as caught:
        client.get("http://billing/")
    assert f"default/billing instance billing-7 at 127.0.0.1:{dead}" in str(caught.value)
    failed = failed_instance(caught.value)
    assert failed is not None and failed.id == "billing-7"
