"""Target names and the shape of the resources: each trap that gRPC acknowledges and then fails every RPC
with is checked on the messages themselves (the client tests check the same end to end)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

from discovery import AsyncRegistry, Instance, Status, ValidationError
from discovery.xds import RegistryTarget, ServiceTarget, parse_target
from discovery.xds.model import PENDING, XdsModel
from discovery.xds.resources import CLUSTER, ENDPOINTS, LISTENER, ROUTE, EndpointSpec, load_assignment


@pytest.mark.parametrize(("name", "expected"), [
    ("orders", RegistryTarget("default", "orders")),
    ("orders.payments", RegistryTarget("payments", "orders")),
    ("shop.prod.svc.cluster.local:80", ServiceTarget("prod", "shop", 80)),
    ("shop.prod.svc.cluster.local", ServiceTarget("prod", "shop", None)),
])
def test_targets(name: str, expected: object) -> None:
    assert parse_target(name) == expected


@pytest.mark.parametrize("name", ["", "Orders", "a.b.c", "orders:80", "xds:///orders", "shop.svc.cluster.local:80",
                                  "shop.prod.svc.cluster.local:http", "shop.prod.svc.cluster.local:70000",
                                  "x" * 400])
def test_bad_targets(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_target(name)
    assert caught.value.field == "target"
    assert len(str(caught.value)) < 200


class Recorder:
    def __init__(self) -> None:
        self.changes: list[str] = []

    def resources_changed(self, type_url: str) -> None:
        self.changes.append(type_url)


async def test_resources_of_a_registry_target(memory_registry: AsyncRegistry) -> None:
    await memory_registry.register(Instance("orders", "a", "127.0.0.1", 7001, zone="z1", weight=3,
                                            labels={"tier": "api"}))
    await memory_registry.register(Instance("orders", "b", "127.0.0.2", 7002, zone="z2"))
    await memory_registry.register(Instance("orders", "c", "127.0.0.3", 7003, status=Status.DRAINING))
    await memory_registry.register(Instance("orders", "d", "127.0.0.4", 7004, status=Status.STARTING))
    model = XdsModel(memory_registry)
    recorder = Recorder()
    for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINTS):
        model.watch(type_url, "orders.default", recorder)
    assert model.lookup(ENDPOINTS, "orders.default") is PENDING  # until the registry's first snapshot
    listener = listener_pb2.Listener()
    model.lookup(LISTENER, "orders.default").packed.Unpack(listener)  # type: ignore[union-attr]
    manager = http_connection_manager_pb2.HttpConnectionManager()
    listener.api_listener.api_listener.Unpack(manager)
    assert manager.rds.route_config_name == "orders.default"
    assert manager.http_filters[-1].name == "envoy.filters.http.router"  # gRPC wants the router last

    route = route_pb2.RouteConfiguration()
    model.lookup(ROUTE, "orders.default").packed.Unpack(route)  # type: ignore[union-attr]
    (host,) = route.virtual_hosts
    assert list(host.domains) == ["orders.default"]  # the dialed target, or gRPC matches no virtual host
    assert host.routes[0].route.cluster == "orders.default"

    cluster = cluster_pb2.Cluster()
    model.lookup(CLUSTER, "orders.default").packed.Unpack(cluster)  # type: ignore[union-attr]
    assert cluster.type == cluster_pb2.Cluster.EDS and cluster.eds_cluster_config.eds_config.HasField("ads")

    while model.lookup(ENDPOINTS, "orders.default") is PENDING:
        await asyncio.sleep(0.01)
    assignment = endpoint_pb2.ClusterLoadAssignment()
    model.lookup(ENDPOINTS, "orders.default").packed.Unpack(assignment)  # type: ignore[union-attr]
    localities = {group.locality.zone: group for group in assignment.endpoints}
    assert set(localities) == {"z1", "z2"}  # DRAINING and STARTING instances are not endpoints
    assert localities["z1"].load_balancing_weight.value == 3  # every locality weighted
    assert localities["z2"].load_balancing_weight.value == 1
    (a,) = localities["z1"].lb_endpoints
    assert a.health_status == health_check_pb2.HealthStatus.HEALTHY
    assert a.load_balancing_weight.value == 3
    assert a.metadata.filter_metadata["discovery"]["labels"]["tier"] == "api"
    assert a.metadata.filter_metadata["discovery"]["id"] == "a"
    await model.close()


def test_host_names_are_left_out_of_assignments(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    resource = load_assignment("x", [EndpointSpec("db.example.internal", 1, instance_id="h"),
                                     EndpointSpec("::1", 2, instance_id="v6")])
    assignment = endpoint_pb2.ClusterLoadAssignment()
    resource.packed.Unpack(assignment)
    (group,) = assignment.endpoints
    assert [e.endpoint.address.socket_address.address for e in group.lb_endpoints] == ["::1"]
    assert "not an IP address" in caplog.text


async def test_unknown_names_do_not_exist(memory_registry: AsyncRegistry) -> None:
    model = XdsModel(memory_registry)
    recorder = Recorder()
    model.watch(LISTENER, "Not A Target", recorder)
    assert model.lookup(LISTENER, "Not A Target") is None
    await model.close()
