"""The canonical, backend-neutral JSON form of an instance.

Every adapter embeds this form in its native record (Curator payload, etcd endpoint ``Metadata``,
Consul ``Meta``) so the round trip is lossless everywhere. Reading tolerates unknown keys so that newer
writers and foreign tools never break older readers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from discovery.core.errors import ValidationError
from discovery.core.models import DEFAULT_NAMESPACE, Instance, Snapshot, Status

SCHEMA_VERSION = 1


def instance_to_dict(instance: Instance) -> dict[str, Any]:
    """The canonical dict of an instance (JSON-ready; keys are stable)."""
    return {
        "schema": SCHEMA_VERSION,
        "namespace": instance.namespace,
        "service": instance.service,
        "id": instance.id,
        "address": instance.address,
        "port": instance.port,
        "labels": dict(instance.labels),
        "ports": dict(instance.ports),
        "status": instance.status.value,
        "weight": instance.weight,
        "zone": instance.zone,
    }


def instance_from_dict(data: Mapping[str, Any]) -> Instance:
    """Rebuild an instance from its canonical dict; unknown keys are ignored.

    Raises :class:`ValidationError` when a required field is missing or a value is malformed.
    """
    if not isinstance(data, Mapping):
        raise ValidationError("instance", f"expected an object, got {type(data).__name__}")
    try:
        return Instance(
            service=data["service"],
            id=data["id"],
            address=data["address"],
            port=data["port"],
            namespace=data.get("namespace", DEFAULT_NAMESPACE),
            labels=data.get("labels") or {},
            ports=data.get("ports") or {},
            status=Status(data.get("status", Status.UP.value)),
            weight=data.get("weight", 1),
            zone=data.get("zone"),
        )
    except KeyError as missing:
        raise ValidationError(str(missing.args[0]), "is missing") from None
    except ValueError as bad:
        if isinstance(bad, ValidationError):
            raise
        raise ValidationError("status", str(bad)) from None


def snapshot_to_dict(snapshot: Snapshot) -> dict[str, Any]:
    """A snapshot as a JSON-ready dict: ``service``, ``namespace``, ``revision``, ``stale`` and its ``instances``
    (canonical dicts, sorted by id). ``discovery watch -o json`` prints one per line."""
    return {
        "service": snapshot.service,
        "namespace": snapshot.namespace,
        "revision": snapshot.revision,
        "stale": snapshot.stale,
        "instances": [instance_to_dict(instance) for instance in snapshot.instances],
    }


def snapshot_from_dict(data: Mapping[str, Any]) -> Snapshot:
    """Rebuild a snapshot from :func:`snapshot_to_dict`'s form (raises :class:`ValidationError` on bad data)."""
    if not isinstance(data, Mapping):
        raise ValidationError("snapshot", f"expected an object, got {type(data).__name__}")
    instances = data.get("instances") or []
    if not isinstance(instances, list):
        raise ValidationError("instances", f"expected a list, got {type(instances).__name__}")
    revision = data.get("revision", 0)
    if not isinstance(revision, int) or isinstance(revision, bool):
        raise ValidationError("revision", f"expected an integer, got {type(revision).__name__}")
    try:
        service, namespace = data["service"], data.get("namespace", DEFAULT_NAMESPACE)
    except KeyError as missing:
        raise ValidationError(str(missing.args[0]), "is missing") from None
    return Snapshot(service, namespace, tuple(instance_from_dict(i) for i in instances), revision,
                    bool(data.get("stale", False)))


def encode_instance(instance: Instance) -> bytes:
    """Compact UTF-8 JSON bytes of the canonical dict."""
    return json.dumps(instance_to_dict(instance), separators=(",", ":"), ensure_ascii=False).encode()


def decode_instance(raw: bytes | str) -> Instance:
    """Parse bytes written by :func:`encode_instance` (raises :class:`ValidationError` on garbage)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as bad:
        raise ValidationError("instance", f"not valid JSON: {bad}") from None
    return instance_from_dict(data)
