"""The record codec: an :class:`Instance` as an agent service's ``Meta``, and back from a health entry.

Where the service lives (name, tags, ID, check IDs) is :mod:`discovery_consul.layout`; see
docs/decisions/consul-record-layout.md for both.

* ``Meta`` carries the canonical dict of :mod:`discovery.core.codec`, one field per key (the whole dict can exceed
  Consul's 512-character value limit): ``discovery-schema``, ``discovery-namespace``, ``discovery-id``,
  ``discovery-status``, ``discovery-weight``, ``discovery-zone`` (absent when None), ``discovery-ports``
  (``name=port,...``, absent when empty), ``discovery-scope`` (absent when unscoped) and one
  ``l-<escaped key>`` per label.
* The status is read from the checks: the liveness check (heartbeat; reaped after
  DeregisterCriticalServiceAfter) decides whether the instance is alive, the status check is critical for
  DOWN/STARTING (so Consul DNS and ``?passing`` drop those instances, yet a long-DOWN instance is never reaped),
  and maintenance mode is DRAINING.
* ``discovery-owner`` is the owner mark: a random token of the registrant (one per backend), also part of the check
  ids (:mod:`discovery_consul.layout`). A newcomer registering the same id (the last registrant owns it, see
  docs/decisions/session-ownership.md) replaces the old owner's checks, so the old owner's next heartbeat fails
  instead of keeping the newcomer alive. Records written before owner marks have none.

Every other catalog entry (Spring Cloud Consul, ``consul services register``, any agent service without our
``Meta``) is a read-only *foreign* instance of the ``default`` namespace of an unscoped registry:
:func:`instance_from_foreign_entry`, docs/decisions/consul-record-layout.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from discovery.core import validation
from discovery.core.codec import SCHEMA_VERSION, instance_from_dict, instance_to_dict
from discovery.core.errors import ValidationError
from discovery.core.foreign import foreign_instance_id, labels_from_pairs, tag_pair
from discovery.core.models import Instance, Status
from discovery_consul.layout import liveness_check_id, maintenance_check_id, status_check_id

log = logging.getLogger("discovery.backends.consul.records")

META_SCHEMA = "discovery-schema"
META_SCOPE = "discovery-scope"
META_NAMESPACE = "discovery-namespace"
META_ID = "discovery-id"
META_STATUS = "discovery-status"
META_WEIGHT = "discovery-weight"
META_ZONE = "discovery-zone"
META_PORTS = "discovery-ports"
META_OWNER = "discovery-owner"
LABEL_PREFIX = "l-"

# Consul Meta keys allow only [A-Za-z0-9_-]; label keys also hold "." and "/". "_" escapes, so it escapes itself.
# Two characters per escape keep the worst label key (63 characters, 61 of them escaped) at 2 + 124 <= 128.
_ESCAPES = {"_": "__", ".": "_d", "/": "_s"}
_UNESCAPES = {code[1]: char for char, code in _ESCAPES.items()}

CONSUL_MAX_META_KEYS = 64
CONSUL_MAX_META_KEY_LENGTH = 128
CONSUL_MAX_META_VALUE_LENGTH = 512

STATUS_CHECK_NOTE_PREFIX = "discovery: "

#: The namespace foreign catalog services (no ``discovery-schema`` in ``Meta``) appear in, unscoped only.
FOREIGN_NAMESPACE = "default"
#: The Meta key Spring Cloud Consul (``spring.cloud.consul.discovery.instance-zone``) and others use for a zone.
FOREIGN_ZONE_KEY = "zone"
NODE_MAINTENANCE_CHECK = "_node_maintenance"


def escape_label_key(key: str) -> str:
    """The Meta key of a label key, e.g. ``app.kubernetes.io/name`` → ``l-app_dkubernetes_dio_sname``."""
    return LABEL_PREFIX + "".join(_ESCAPES.get(char, char) for char in key)


def unescape_label_key(meta_key: str) -> str:
    """The label key of a Meta key written by :func:`escape_label_key` (``ValidationError`` if malformed)."""
    if not meta_key.startswith(LABEL_PREFIX):
        raise ValidationError("labels", f"Meta key {meta_key!r} is not a label key")
    escaped = meta_key[len(LABEL_PREFIX) :]
    chars: list[str] = []
    position = 0
    while position < len(escaped):
        char = escaped[position]
        if char == "_":
            code = escaped[position + 1 : position + 2]
            if code not in _UNESCAPES:
                raise ValidationError("labels", f"Meta key {meta_key!r} has a bad escape")
            chars.append(_UNESCAPES[code])
            position += 2
        else:
            chars.append(char)
            position += 1
    return "".join(chars)


def status_check_passing(status: Status) -> bool:
    """Whether the status check passes: DOWN and STARTING take no traffic, so they fail it."""
    return status not in (Status.DOWN, Status.STARTING)


def instance_meta(instance: Instance, scope: str | None = None, owner: str | None = None) -> dict[str, str]:
    """The ``Meta`` mapping of an instance (fits Consul's limits for every valid instance)."""
    canonical = instance_to_dict(instance)
    meta = {} if scope is None else {META_SCOPE: scope}
    if owner is not None:
        meta[META_OWNER] = owner
    meta |= {
        META_SCHEMA: str(canonical["schema"]),
        META_NAMESPACE: canonical["namespace"],
        META_ID: canonical["id"],
        META_STATUS: canonical["status"],
        META_WEIGHT: str(canonical["weight"]),
    }
    if canonical["zone"] is not None:
        meta[META_ZONE] = canonical["zone"]
    if canonical["ports"]:
        meta[META_PORTS] = ",".join(f"{name}={port}" for name, port in sorted(canonical["ports"].items()))
    for key, value in canonical["labels"].items():
        meta[escape_label_key(key)] = value
    return meta


def check_meta_limits(meta: Mapping[str, str]) -> None:
    """Raise ``ValidationError`` if ``meta`` breaks a Consul limit (guards the layout, never expected to fire)."""
    if len(meta) > CONSUL_MAX_META_KEYS:
        raise ValidationError("labels", f"needs {len(meta)} Consul Meta keys; Consul allows {CONSUL_MAX_META_KEYS}")
    for key, value in meta.items():
        if len(key) > CONSUL_MAX_META_KEY_LENGTH or len(value) > CONSUL_MAX_META_VALUE_LENGTH:
            raise ValidationError("labels", f"Consul Meta entry {key[:20]!r}... is too long")


def _parse_ports(text: str) -> dict[str, int]:
    ports: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        name, equals, number = item.partition("=")
        if not equals or not number.isdigit():
            raise ValidationError("ports", f"malformed Consul Meta {META_PORTS} entry {item!r}")
        ports[name] = int(number)
    return ports


def instance_from_service(service: Mapping[str, Any]) -> Instance:
    """Rebuild the instance from a Consul ``Service`` object (``ValidationError`` if it is not ours)."""
    meta: Mapping[str, str] = service.get("Meta") or {}
    if META_SCHEMA not in meta or META_ID not in meta:
        raise ValidationError("instance", f"Consul service {service.get('ID')!r} was not written by discovery")
    try:
        weight = int(meta.get(META_WEIGHT, "1"))
    except ValueError:
        raise ValidationError("weight", f"{meta[META_WEIGHT]!r} is not an integer") from None
    canonical = {
        "schema": SCHEMA_VERSION,
        "namespace": meta.get(META_NAMESPACE),
        "service": service.get("Service"),
        "id": meta[META_ID],
        "address": service.get("Address"),
        "port": service.get("Port"),
        "labels": {unescape_label_key(k): v for k, v in meta.items() if k.startswith(LABEL_PREFIX)},
        "ports": _parse_ports(meta.get(META_PORTS, "")),
        "status": meta.get(META_STATUS, Status.UP.value),
        "weight": weight,
        "zone": meta.get(META_ZONE),
    }
    return instance_from_dict(canonical)


def _check_status(checks: list[Mapping[str, Any]], check_id: str) -> str | None:
    for check in checks:
        if check.get("CheckID") == check_id:
            return str(check.get("Status"))
    return None


def owner_of(service: Mapping[str, Any]) -> str | None:
    """The owner mark of a Consul ``Service`` object (``None``: written without one)."""
    meta: Mapping[str, str] = service.get("Meta") or {}
    return meta.get(META_OWNER)


def scope_of(entry: Mapping[str, Any]) -> str | None:
    """The scope a health entry's service was written in (None: unscoped)."""
    meta: Mapping[str, str] = (entry.get("Service") or {}).get("Meta") or {}
    return meta.get(META_SCOPE)


def instance_from_health_entry(entry: Mapping[str, Any]) -> Instance | None:
    """The instance of one ``/v1/health/service`` entry with its live status, or None if it is not alive.

    Not alive: the liveness check is missing or critical (heartbeat stopped), or a node check is critical
    (the node failed). Status: maintenance mode → DRAINING; a critical status check → the declared DOWN or
    STARTING (DOWN if the declared status says neither); otherwise UP. The checks, not ``Meta``, decide, so
    an operator's ``consul maint`` shows as DRAINING and every update moves through consistent states.
    Raises ``ValidationError`` for a service discovery did not write.
    """
    service: Mapping[str, Any] = entry.get("Service") or {}
    checks: list[Mapping[str, Any]] = list(entry.get("Checks") or ())
    instance = instance_from_service(service)
    service_id = str(service.get("ID"))
    owner = owner_of(service)
    if _check_status(checks, liveness_check_id(service_id, owner)) in (None, "critical"):
        return None
    if any(not check.get("ServiceID") and check.get("Status") == "critical" for check in checks):
        return None
    status_check = status_check_of(service_id, checks)
    if _check_status(checks, maintenance_check_id(service_id)) is not None:
        status = Status.DRAINING
    elif status_check is not None and status_check.get("Status") == "critical":
        noted = noted_status(status_check.get("Output"))
        declared = instance.status if instance.status in (Status.DOWN, Status.STARTING) else Status.DOWN
        fresh_note = noted in (Status.DOWN, Status.STARTING) and _noted_is_newer(service, status_check)
        status = noted if noted is not None and fresh_note else declared
    else:
        status = Status.UP
    return instance if status == instance.status else instance.with_changes(status=status)


def _noted_is_newer(service: Mapping[str, Any], status_check: Mapping[str, Any]) -> bool:
    """Whether the status check's note was written after the service's ``Meta`` (so it names the status).

    The owner's write re-registers the service with its checks, which its agent syncs to the catalog in one
    transaction (equal ``ModifyIndex``), while the note it sets right after is an output-only change that the agent
    syncs only within ``check_update_interval`` (5 min by default): until then the note is the previous status and
    ``Meta`` the current one. An operator's ``set-status`` changes the check alone, which moves its index past the
    service's. Without indexes (not a catalog answer) the note wins, as it always did.
    """
    service_index, check_index = service.get("ModifyIndex"), status_check.get("ModifyIndex")
    if not isinstance(service_index, int) or not isinstance(check_index, int):
        return True
    return check_index > service_index


def status_check_of(service_id: str, checks: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The status check of a service among a health entry's checks (its id is :func:`status_check_id`, possibly
    followed by ``:<owner mark>``), or ``None``."""
    check_id = status_check_id(service_id)
    for check in checks:
        found = str(check.get("CheckID"))
        if found == check_id or found.startswith(f"{check_id}:"):
            return check
    return None


def noted_status(output: object) -> Status | None:
    """The status a status check's note names (``discovery: DOWN``, written by its owner or by ``set-status``)."""
    if not isinstance(output, str) or not output.startswith(STATUS_CHECK_NOTE_PREFIX):
        return None
    try:
        return Status(output[len(STATUS_CHECK_NOTE_PREFIX):].strip())
    except ValueError:
        return None


def is_ours(entry: Mapping[str, Any]) -> bool:
    """Whether a health entry's service carries our ``Meta`` schema (else it is foreign)."""
    meta = (entry.get("Service") or {}).get("Meta") or {}
    return isinstance(meta, Mapping) and META_SCHEMA in meta


def entry_service_id(entry: Mapping[str, Any]) -> str:
    """The agent service ``ID`` of a health entry."""
    return str((entry.get("Service") or {}).get("ID"))


def sees_foreign(scope: str | None, namespace: str) -> bool:
    """Whether reads of ``namespace`` include foreign services: only an unscoped registry's ``default``."""
    return scope is None and namespace == FOREIGN_NAMESPACE


def query_tag(scope: str | None, namespace: str) -> str | None:
    """The ``?tag=`` of a health query: our namespace tag, or none where foreign entries (untagged) count too."""
    return None if sees_foreign(scope, namespace) else namespace


def foreign_status(service_id: str, checks: list[Mapping[str, Any]]) -> Status:
    """A foreign entry's status: maintenance (service or node) → DRAINING, a critical check → DOWN, else UP.

    ``warning`` counts as UP: Consul DNS and Spring Cloud Consul's default query still route to it.
    """
    check_ids = {check.get("CheckID") for check in checks}
    if maintenance_check_id(service_id) in check_ids or NODE_MAINTENANCE_CHECK in check_ids:
        return Status.DRAINING
    if any(check.get("Status") == "critical" for check in checks):
        return Status.DOWN
    return Status.UP


def foreign_id(service: Mapping[str, Any], node: str | None = None) -> str:
    """The instance id of a foreign service: its ``ID`` (``<ID>@<node>`` when several nodes use that ``ID``),
    escaped reversibly where it is not a valid id (:func:`discovery.core.foreign.foreign_instance_id`)."""
    service_id = str(service.get("ID") or service.get("Service") or "")
    return foreign_instance_id(service_id if node is None else f"{service_id}@{node}")


def instance_from_foreign_entry(entry: Mapping[str, Any], *, qualify_with_node: bool = False) -> Instance:
    """A read-only instance of a health entry discovery did not write, in :data:`FOREIGN_NAMESPACE`.

    ``ID`` → id (see :func:`foreign_id`); ``Address`` (else the node's) and ``Port``; tags → labels (``k=v`` as
    ``k: v``, a bare tag as ``tag: ""``) and ``Meta`` → labels, where valid (``Meta`` wins); ``Meta["zone"]`` →
    zone; ``Weights.Passing`` → weight; the checks → status (:func:`foreign_status`). Raises
    ``ValidationError`` when no valid instance can be made (no port, a service name that is no DNS label...).
    """
    service: Mapping[str, Any] = entry.get("Service") or {}
    node: Mapping[str, Any] = entry.get("Node") or {}
    checks: list[Mapping[str, Any]] = list(entry.get("Checks") or ())
    name = str(service.get("Service"))
    tags = [tag for tag in service.get("Tags") or () if isinstance(tag, str)]
    meta: Mapping[str, Any] = service.get("Meta") or {}
    labels = labels_from_pairs(
        [*(tag_pair(tag) for tag in tags), *meta.items()], log, f"Consul service {str(service.get('ID'))[:64]!r}"
    )
    zone = meta.get(FOREIGN_ZONE_KEY)
    try:
        zone = validation.validate_zone(zone) if zone else None
    except ValidationError:
        zone = None
    weights = service.get("Weights") or {}
    weight = weights.get("Passing") if isinstance(weights, Mapping) else None
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= validation.MAX_WEIGHT:
        weight = 1
    node_name = str(node.get("Node")) if qualify_with_node else None
    return Instance(
        service=name,
        id=foreign_id(service, node_name),
        address=service.get("Address") or node.get("Address"),  # type: ignore[arg-type]  # validated by Instance
        port=service.get("Port"),  # type: ignore[arg-type]  # validated by Instance
        namespace=FOREIGN_NAMESPACE,
        labels=labels,
        status=foreign_status(str(service.get("ID")), checks),
        weight=weight,
        zone=zone,
    )
