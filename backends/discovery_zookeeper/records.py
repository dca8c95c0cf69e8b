"""The znode data: Apache Curator x-discovery's ``ServiceInstance`` JSON, our canonical dict in ``payload``.

Written (Curator's "compatible serialization mode", the default of ``JsonInstanceSerializer``)::

    {"name": service, "id": id, "address": address, "port": port, "sslPort": null,
     "payload": {"@class": <payload class>, "id": id, "name": service,
                 "metadata": {<labels>..., "instance_status": "UP"}, <canonical dict keys>...},
     "registrationTimeUTC": <ms>, "serviceType": "DYNAMIC", "uriSpec": null}

``payload.metadata.instance_status`` is where Spring Cloud Zookeeper keeps the status; it is mapped to and from
ours. Reading accepts any Curator writer: unknown keys are ignored, a foreign payload yields an instance built
from the top-level fields plus whatever of Spring's ``metadata`` is valid as labels. Reading also accepts the
other widely deployed ZooKeeper convention, Finagle/Aurora ServerSet member JSON (:func:`decode_serverset`).
Foreign records are read-only; their id is the znode name, escaped reversibly where it is not a valid id.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from discovery.core import validation
from discovery.core.codec import instance_from_dict, instance_to_dict
from discovery.core.errors import UnsupportedOperationError, ValidationError
from discovery.core.foreign import foreign_instance_id
from discovery.core.models import Instance, Status

logger = logging.getLogger("discovery.backends.zookeeper.records")

SPRING_STATUS_KEY = "instance_status"
_TO_SPRING = {
    Status.UP: "UP",
    Status.STARTING: "STARTING",
    Status.DRAINING: "OUT_OF_SERVICE",
    Status.DOWN: "DOWN",
}
_FROM_SPRING = {
    "UP": Status.UP,
    "STARTING": Status.STARTING,
    "OUT_OF_SERVICE": Status.DRAINING,
    "DOWN": Status.DOWN,
    "UNKNOWN": Status.DOWN,
}


def status_to_spring(status: Status) -> str:
    """Our status as Spring Cloud's ``instance_status`` (``DRAINING`` is Spring's ``OUT_OF_SERVICE``)."""
    return _TO_SPRING[status]


def status_from_spring(value: object) -> Status:
    """Spring Cloud's ``instance_status`` as our status: missing means ``UP``, unknown words mean ``DOWN``."""
    if value is None:
        return Status.UP
    return _FROM_SPRING.get(str(value).upper(), Status.DOWN)


def encode_record(instance: Instance, *, payload_class: str | None, registered_at_ms: int | None = None) -> bytes:
    """The znode bytes for an instance."""
    canonical = instance_to_dict(instance)
    metadata: dict[str, str] = dict(instance.labels)
    metadata[SPRING_STATUS_KEY] = status_to_spring(instance.status)
    payload: dict[str, Any] = {}
    if payload_class:
        payload["@class"] = payload_class
    payload.update(canonical)
    # Spring's ZookeeperInstance fields ("id" is shared with the canonical dict and means the same).
    payload["name"] = instance.service
    payload["metadata"] = metadata
    record = {
        "name": instance.service,
        "id": instance.id,
        "address": instance.address,
        "port": instance.port,
        "sslPort": None,
        "payload": payload,
        "registrationTimeUTC": registered_at_ms if registered_at_ms is not None else int(time.time() * 1000),
        "serviceType": "DYNAMIC",
        "uriSpec": None,
    }
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def decode_record(raw: bytes, *, namespace: str, service: str, node_name: str) -> Instance:
    """Rebuild an instance from znode bytes found at ``<root>/<namespace>/<service>/<node_name>``.

    The path is authoritative for namespace, service and id. Raises ``ValidationError`` when the data is
    not a usable ServiceInstance.
    """
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as bad:
        raise ValidationError("instance", f"znode data is not JSON: {bad}") from None
    if not isinstance(record, Mapping):
        raise ValidationError("instance", "znode data is not a JSON object")
    payload = record.get("payload")
    payload = payload if isinstance(payload, Mapping) else {}
    metadata = payload.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}

    port = record.get("port")
    if port is None:
        port = record.get("sslPort")
    address = record.get("address")

    if "schema" in payload and "service" in payload:
        data = dict(payload)
        data.update(namespace=namespace, service=service, id=node_name)
        # Curator's top-level fields win: a Java tool may have rewritten them.
        if address is not None:
            data["address"] = address
        if port is not None:
            data["port"] = port
        data["status"] = _reconcile_status(payload.get("status"), metadata.get(SPRING_STATUS_KEY))
        return instance_from_dict(data)

    if "serviceEndpoint" in record:
        return decode_serverset(record, namespace=namespace, service=service, node_name=node_name)

    return Instance(
        namespace=namespace,
        service=service,
        id=foreign_instance_id(node_name),
        address=address,  # type: ignore[arg-type]  # validated by Instance
        port=port,  # type: ignore[arg-type]
        labels=_labels_from_metadata(metadata),
        status=status_from_spring(metadata.get(SPRING_STATUS_KEY)),
    )


def with_status(raw: bytes, status: Status, *, namespace: str, service: str, node_name: str) -> tuple[bytes, Instance]:
    """The znode bytes with another status, edited in place (every other byte of the record kept), and the instance
    they now hold.

    Ours: ``payload.status`` and Spring's ``payload.metadata.instance_status``; a Spring Cloud Zookeeper record
    (a Curator payload with ``metadata``, as Spring's service-registry endpoint does): ``instance_status`` alone.
    Anything else (a ServerSet member, a payload without metadata) raises ``UnsupportedOperationError``.
    """
    try:
        decode_record(raw, namespace=namespace, service=service, node_name=node_name)  # readable at all?
    except ValidationError as error:
        raise UnsupportedOperationError(f"{namespace}/{service}/{node_name} cannot be read ({error}): "
                                        "it is read-only here") from None
    record = json.loads(raw)
    payload = record.get("payload")
    metadata = payload.get("metadata") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or not isinstance(metadata, dict):
        raise UnsupportedOperationError(
            f"{namespace}/{service}/{node_name} was registered by another tool without Curator/Spring metadata: "
            "it is read-only here")
    if "schema" in payload:
        payload["status"] = status.value
    metadata[SPRING_STATUS_KEY] = status_to_spring(status)
    data = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
    return data, decode_record(data, namespace=namespace, service=service, node_name=node_name)


#: Finagle/Aurora ServerSet ``status`` (``com.twitter.thrift.Status``) as ours; WARNING still takes traffic.
_FROM_SERVERSET = {
    "ALIVE": Status.UP,
    "WARNING": Status.UP,
    "STARTING": Status.STARTING,
    "STOPPING": Status.DRAINING,
    "STOPPED": Status.DOWN,
    "DEAD": Status.DOWN,
}


def decode_serverset(record: Mapping[str, Any], *, namespace: str, service: str, node_name: str) -> Instance:
    """A Finagle/Aurora ServerSet member (``member_0000000042``) as a read-only instance.

    ``{"serviceEndpoint": {"host", "port"}, "additionalEndpoints": {name: {"host", "port"}}, "status": "ALIVE",
    "shard": 0}``: the service endpoint is the address and port; additional endpoints on the same host are named
    ports where the name is a valid port name (``http``, ``admin``...); ``shard`` is the label ``shard``; status
    ALIVE/WARNING → UP, STARTING → STARTING, STOPPING → DRAINING, STOPPED/DEAD (or unknown) → DOWN.
    """
    endpoint = record.get("serviceEndpoint")
    if not isinstance(endpoint, Mapping):
        raise ValidationError("instance", "ServerSet serviceEndpoint is not an object")
    host = endpoint.get("host")
    ports: dict[str, int] = {}
    additional = record.get("additionalEndpoints")
    for name, extra in (additional.items() if isinstance(additional, Mapping) else ()):
        if not isinstance(extra, Mapping) or extra.get("host") != host or len(ports) >= validation.MAX_NAMED_PORTS:
            continue
        try:
            ports.update(validation.validate_named_ports({name: extra.get("port")}))
        except ValidationError:
            logger.debug("skipping ServerSet endpoint %r of %s/%s/%s", str(name)[:64], namespace, service, node_name)
    shard = record.get("shard")
    labels = {"shard": str(shard)} if isinstance(shard, int) and not isinstance(shard, bool) else {}
    status = record.get("status")
    return Instance(
        namespace=namespace,
        service=service,
        id=foreign_instance_id(node_name),
        address=host,  # type: ignore[arg-type]  # validated by Instance
        port=endpoint.get("port"),  # type: ignore[arg-type]
        labels=labels,
        ports=ports,
        status=_FROM_SERVERSET.get(str(status).upper(), Status.DOWN) if status is not None else Status.UP,
    )


def _reconcile_status(ours: object, spring: object) -> str:
    """Our canonical status unless a Spring tool has since changed ``instance_status`` to something else."""
    try:
        canonical = Status(str(ours)) if ours is not None else Status.UP
    except ValueError:
        canonical = Status.UP
    if spring is None or str(spring).upper() == status_to_spring(canonical):
        return canonical.value
    return status_from_spring(spring).value


def _labels_from_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Spring metadata entries that are valid labels (others are skipped, never fatal)."""
    labels: dict[str, str] = {}
    for key, value in metadata.items():
        if key == SPRING_STATUS_KEY or not isinstance(value, str) or len(labels) >= validation.MAX_LABELS:
            continue
        try:
            validation.validate_labels({key: value})
        except ValidationError:
            logger.debug("skipping metadata %r: not a valid label", key)
            continue
        labels[key] = value
    return labels
