"""The Service model and manifest codec without a backend: round trips, defaults, warnings, lists, and the
clear error of a backend without durable definitions."""

from __future__ import annotations

import pytest

from discovery import ValidationError
from discovery.core.errors import UnsupportedOperationError
from discovery.memory import MemoryBackend, memory_store
from discovery.services import (
    HEADLESS,
    Service,
    ServicePort,
    ServiceStore,
    ServiceType,
    decode_service,
    encode_service,
    parse_manifests,
)


def test_manifest_round_trip_and_defaults() -> None:
    [loaded] = parse_manifests("""
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop, labels: {team: a}, uid: x-1}
spec:
  clusterIP: None
  sessionAffinity: None
  selector: {app: api}
  ports: [{port: 8080, targetPort: grpc}]
status: {loadBalancer: {}}
""")
    service = loaded.service
    assert service.headless and service.cluster_ip == HEADLESS and service.type is ServiceType.CLUSTER_IP
    assert service.ports == (ServicePort(8080, "grpc"),) and service.ports[0].label == "8080"
    assert loaded.warnings == ("status: output-only, ignored", "metadata.uid: output-only, ignored")
    assert decode_service(encode_service(service)) == service
    assert service.dns_name() == "api.shop.svc.cluster.local"


def test_list_documents_and_several_ports() -> None:
    loaded = parse_manifests("""
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a}
  spec: {selector: {app: a}, ports: [{name: http, port: 80}, {name: admin, port: 81, targetPort: 9000}]}
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {type: ExternalName, externalName: db.example.com}
""")
    assert [item.service.name for item in loaded] == ["a", "b"]
    assert [p.target_port for p in loaded[0].service.ports] == [80, 9000]
    assert loaded[1].service.external_name == "db.example.com"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ports": (ServicePort(80, name="a"), ServicePort(81))}, "spec.ports[1].name"),
        ({"ports": (ServicePort(80, name="a"), ServicePort(80, name="b"))}, "spec.ports[1].port"),
        ({"type": ServiceType.NODE_PORT, "cluster_ip": HEADLESS}, "spec.clusterIP"),
        ({"load_balancer_ip": "127.0.0.9"}, "spec.loadBalancerIP"),
        ({"external_ips": ("not-an-ip",)}, "spec.externalIPs[0]"),
        ({"ports": ()}, "spec.ports"),
    ],
)
def test_invalid_services_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Service("web", selector={"app": "web"}, ports=(ServicePort(80),)).with_changes(**changes)
    assert raised.value.field == field


async def test_backend_without_definitions_is_a_clear_error() -> None:
    class Forgetful(MemoryBackend):
        @property
        def definitions(self) -> None:  # type: ignore[override]
            return None

    store = ServiceStore(Forgetful(memory_store("svc-forgetful")))
    with pytest.raises(UnsupportedOperationError, match="cannot store Service definitions"):
        await store.list()
