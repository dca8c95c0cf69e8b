"""The Envoy v3 resources served for a target: Listener -> RouteConfiguration -> Cluster -> ClusterLoadAssignment.

Each builder returns a :class:`Resource`: the message packed in an ``Any``, once, and a digest of its
deterministic serialisation (streams compare digests to know what changed; every stream shares the packed
message).

Shapes that gRPC acknowledges and then fails every RPC with are avoided here, each gated by a test in
``tests/xds/``: every locality carries a ``load_balancing_weight`` (a locality without one is dropped by
gRPC's weighted target policy), the virtual host's domains are exactly the target the client dialed, and only
UP instances become endpoints, all marked HEALTHY (an endpoint set of UNHEALTHY/DRAINING entries is an empty
set to gRPC). Addresses must be IP literals (gRPC rejects the whole assignment otherwise): an instance
registered under a host name is left out with a warning.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from google.protobuf import any_pb2, struct_pb2, wrappers_pb2  # type: ignore[import-untyped]

log = logging.getLogger("discovery.xds")

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
#: The order in which a stream sends pending updates (clusters before their endpoints, listeners before
#: routes), as Envoy recommends for ADS so that nothing points at a resource the client does not have yet.
TYPE_ORDER = (CLUSTER, ENDPOINTS, LISTENER, ROUTE)
#: Listener and Cluster replies must hold every subscribed resource: one left out is deleted by the client.
STATE_OF_THE_WORLD_TYPES = frozenset((LISTENER, CLUSTER))
SHORT_TYPE_NAMES = {LISTENER: "LDS", ROUTE: "RDS", CLUSTER: "CDS", ENDPOINTS: "EDS"}
#: The endpoint metadata namespace holding the instance's labels and identity.
METADATA_NAMESPACE = "discovery"
_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


class LbPolicy(enum.StrEnum):
    """The Cluster's load-balancing policy. gRPC supports the first three; ``maglev`` is Envoy-only (gRPC
    rejects the Cluster with a NACK).
    """

    ROUND_ROBIN = "round_robin"
    LEAST_REQUEST = "least_request"
    RING_HASH = "ring_hash"
    MAGLEV = "maglev"


@dataclass(frozen=True, slots=True)
class Resource:
    """One xDS resource, packed, with the digest of its content."""

    type_url: str
    name: str
    packed: any_pb2.Any
    digest: bytes


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One endpoint of a Cluster: where to connect, and what the registry knows about it."""

    address: str
    port: int
    weight: int = 1
    zone: str | None = None
    instance_id: str = ""
    service: str = ""
    namespace: str = ""
    labels: Mapping[str, str] | None = None


def _resource(type_url: str, name: str, message: Any) -> Resource:
    packed = any_pb2.Any()
    packed.Pack(message)
    body = message.SerializeToString(deterministic=True)
    return Resource(type_url, name, packed, hashlib.sha256(body).digest())


def _ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.ApiVersion.V3
    )


def listener(name: str, route_name: str) -> Resource:
    """A gRPC API listener: an HTTP connection manager that takes its routes over RDS, router filter last."""
    manager = http_connection_manager_pb2.HttpConnectionManager(
        stat_prefix=name,
        rds=http_connection_manager_pb2.Rds(config_source=_ads_source(), route_config_name=route_name),
    )
    router = any_pb2.Any()
    router.Pack(router_pb2.Router())
    manager.http_filters.add(name="envoy.filters.http.router", typed_config=router)
    packed_manager = any_pb2.Any()
    packed_manager.Pack(manager)
    message = listener_pb2.Listener(name=name, api_listener=api_listener_pb2.ApiListener(api_listener=packed_manager))
    return _resource(LISTENER, name, message)


def route_configuration(name: str, domain: str, cluster_name: str) -> Resource:
    """One virtual host whose only domain is the dialed target, every request to ``cluster_name``."""
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix=""),
        route=route_components_pb2.RouteAction(cluster=cluster_name),
    )
    host = route_components_pb2.VirtualHost(name=name, domains=[domain], routes=[route])
    return _resource(ROUTE, name, route_pb2.RouteConfiguration(name=name, virtual_hosts=[host]))


_LB_POLICIES = {
    LbPolicy.ROUND_ROBIN: cluster_pb2.Cluster.LbPolicy.ROUND_ROBIN,
    LbPolicy.LEAST_REQUEST: cluster_pb2.Cluster.LbPolicy.LEAST_REQUEST,
    LbPolicy.RING_HASH: cluster_pb2.Cluster.LbPolicy.RING_HASH,
    LbPolicy.MAGLEV: cluster_pb2.Cluster.LbPolicy.MAGLEV,
}


def cluster(name: str, lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN) -> Resource:
    """An EDS cluster whose endpoints come over ADS under the same name."""
    message = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.DiscoveryType.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads_source(), service_name=name),
        lb_policy=_LB_POLICIES[lb_policy],
    )
    message.connect_timeout.FromMilliseconds(1000)
    return _resource(CLUSTER, name, message)


def is_ip_literal(address: str) -> bool:
    """Whether ``address`` is an IPv4 or IPv6 literal (gRPC accepts nothing else in an assignment)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _metadata(endpoint: EndpointSpec) -> base_pb2.Metadata:
    fields = struct_pb2.Struct()
    fields.update({
        "id": endpoint.instance_id,
        "service": endpoint.service,
        "namespace": endpoint.namespace,
        "labels": dict(endpoint.labels or {}),
    })
    metadata = base_pb2.Metadata()
    metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(fields)
    return metadata


def load_assignment(name: str, endpoints: Iterable[EndpointSpec]) -> Resource:
    """The endpoints of a Cluster, one locality per zone, each locality weighted by its endpoints' weights."""
    by_zone: dict[str, list[EndpointSpec]] = {}
    for endpoint in endpoints:
        if not is_ip_literal(endpoint.address):
            log.warning("endpoint %s of %s left out: %r is not an IP address (gRPC accepts only IP literals)",
                        endpoint.instance_id, name, endpoint.address[:64])
            continue
        by_zone.setdefault(endpoint.zone or "", []).append(endpoint)
    message = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    for zone in sorted(by_zone):
        members = sorted(by_zone[zone], key=lambda e: (e.address, e.port, e.instance_id))
        locality = message.endpoints.add(
            locality=base_pb2.Locality(zone=zone),
            load_balancing_weight=wrappers_pb2.UInt32Value(value=sum(e.weight for e in members)),
            priority=0,
        )
        for member in members:
            locality.lb_endpoints.append(endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(
                    address=address_pb2.Address(socket_address=address_pb2.SocketAddress(
                        address=member.address, port_value=member.port)),
                    hostname=member.instance_id,
                ),
                health_status=health_check_pb2.HealthStatus.HEALTHY,
                load_balancing_weight=wrappers_pb2.UInt32Value(value=member.weight),
                metadata=_metadata(member),
            ))
    return _resource(ENDPOINTS, name, message)
