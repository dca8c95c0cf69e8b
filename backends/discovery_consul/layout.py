"""Where an instance lives in Consul's agent catalog: its service name, tags, service ID and check IDs.

One instance is one agent service (see docs/decisions/consul-record-layout.md):

* ``Service`` = the service name (the same in every namespace); ``Tags`` = ``[namespace]``, so that
  ``<namespace>.<service>.service.consul`` answers in Consul DNS and ``?tag=`` filters server-side.
* ``ID`` = ``[<scope>:]<namespace>:<service>:<id>``: agent service ids are unique per agent across all services,
  and ``:`` appears in no scope, namespace or service name, so the id is unambiguous.
* Two TTL checks: ``service:<ID>:<owner>`` proves liveness (the heartbeat) and ``service:<ID>:status:<owner>``
  mirrors the status; maintenance mode adds Consul's own ``_service_maintenance:<ID>``. ``<owner>`` is the
  registrant's owner mark (also in ``Meta``, docs/decisions/session-ownership.md); records written before owner
  marks have ``service:<ID>`` and ``service:<ID>:status``.

What the service's ``Meta`` holds (the instance's fields) is the record codec, :mod:`discovery_consul.records`;
durable definitions live in KV, see :mod:`discovery_consul.definitions`.
"""

from __future__ import annotations

from discovery.core.models import Instance


def consul_service_id(instance: Instance, scope: str | None = None) -> str:
    """The agent service id of an instance: ``[<scope>:]<namespace>:<service>:<id>``."""
    unscoped = f"{instance.namespace}:{instance.service}:{instance.id}"
    return unscoped if scope is None else f"{scope}:{unscoped}"


def service_tags(instance: Instance) -> list[str]:
    """The agent service's tags: its namespace (a Consul DNS name and server-side filter)."""
    return [instance.namespace]


def liveness_check_id(service_id: str, owner: str | None = None) -> str:
    """The TTL check the owner's heartbeat passes (``service:<ID>``, Consul's own name, without an owner mark)."""
    return f"service:{service_id}" if owner is None else f"service:{service_id}:{owner}"


def status_check_id(service_id: str, owner: str | None = None) -> str:
    """The TTL check that is critical while the instance is DOWN or STARTING."""
    return f"service:{service_id}:status" if owner is None else f"service:{service_id}:status:{owner}"


def maintenance_check_id(service_id: str) -> str:
    """The check Consul adds while a service is in maintenance mode."""
    return f"_service_maintenance:{service_id}"
