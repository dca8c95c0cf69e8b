"""The documents behind ``-o json`` and ``-o yaml``, and the names of ``-o name``: each reads back into the model.

* Instances (``list``, ``get instances``): a list of canonical instance dicts,
  :func:`discovery.core.codec.instance_from_dict` reads each. ``-o name``: ``<service>/<id>``, the INSTANCE argument
  of ``drain`` and ``set-status``.
* A snapshot (``watch -o json``, one JSON line per change): :func:`discovery.core.codec.snapshot_to_dict`;
  :func:`~discovery.core.codec.snapshot_from_dict` reads it.
* Services (``get services``): one Service manifest for ``get services NAME``, else a ``kind: List`` of them, as
  ``kubectl get -o yaml`` prints; :func:`discovery.services.parse_manifests` reads either, and
  ``discovery apply -f`` applies it again. ``-o name``: ``service/<name>``.
* Endpoints (``get endpoints``) and a description (``describe service``): the Service's manifest and the instances
  it selects (canonical dicts), with the resolved endpoints per port;
  :func:`discovery.services.resolve_endpoints` of the two gives the same endpoints again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from discovery.core.codec import instance_to_dict
from discovery.core.models import Instance
from discovery.services import Endpoints, Service, service_to_manifest


def instances_document(instances: Iterable[Instance]) -> list[dict[str, Any]]:
    """Canonical dicts of instances."""
    return [instance_to_dict(instance) for instance in instances]


def instance_name(instance: Instance) -> str:
    """``<service>/<id>``: what ``drain`` and ``set-status`` take (with ``-n <namespace>``)."""
    return f"{instance.service}/{instance.id}"


def services_document(services: Sequence[Service], *, single: bool) -> dict[str, Any]:
    """One manifest (``single``), else a ``kind: List`` of manifests."""
    if single:
        [service] = services
        return service_to_manifest(service)
    return {"apiVersion": "v1", "kind": "List", "items": [service_to_manifest(s) for s in services]}


def service_name(service: Service) -> str:
    """``service/<name>`` (kubectl's ``-o name``)."""
    return f"service/{service.name}"


def endpoints_document(endpoints: Endpoints, service: Service) -> dict[str, Any]:
    """A Service's endpoints: its manifest, the instances it selects, and per port the resolved endpoints."""
    return {
        "namespace": endpoints.namespace,
        "name": endpoints.name,
        "stale": endpoints.stale,
        "service": service_to_manifest(service),
        "ports": [
            {
                "name": entry.port.name,
                "port": entry.port.port,
                "targetPort": entry.port.target_port,
                "protocol": entry.port.protocol,
                "endpoints": [{"id": e.instance.id, "address": e.address, "port": e.port} for e in entry.endpoints],
            }
            for entry in endpoints.ports
        ],
        "instances": instances_document(endpoints.instances),
    }


def description_document(service: Service, endpoints: Endpoints) -> dict[str, Any]:
    """``describe service -o json``: the endpoints document with the DNS names the Service answers to."""
    return {
        "dns": service.dns_name(),
        "srv": [f"_{port.label}._tcp.{service.dns_name()}" for port in service.ports],
        **endpoints_document(endpoints, service),
    }
