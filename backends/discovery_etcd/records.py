"""The stored value: the JSON that etcd's ``client/v3/naming/endpoints`` writes and its gRPC resolver reads.

``{"Op":0,"Addr":"<host>:<port>","Metadata":{...canonical instance dict...}}``. The bytes are what Go's
``encoding/json`` produces for the same ``internal.Update`` struct holding a ``map[string]any``: struct
fields in declaration order, map keys sorted, no spaces, ``<``, ``>``, ``&``, U+2028 and U+2029 escaped.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

from discovery.core.codec import instance_from_dict, instance_to_dict
from discovery.core.errors import ValidationError
from discovery.core.foreign import foreign_instance_id, log_skipped
from discovery.core.models import Instance

log = logging.getLogger("discovery.backends.etcd.records")

OP_ADD = 0
OP_DELETE = 1

# Go's encoding/json escapes these even inside strings; they can only occur inside strings in our output.
_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_GO_ESCAPE_TABLE = str.maketrans(_GO_ESCAPES)


def join_host_port(host: str, port: int) -> str:
    """``host:port`` the way Go's ``net.JoinHostPort`` writes it (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(addr: str) -> tuple[str, int] | None:
    """The inverse of :func:`join_host_port`; ``None`` when ``addr`` has no valid port."""
    host, colon, port_text = addr.rpartition(":")
    if not colon or not port_text.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def go_json(value: Any) -> str:
    """Compact JSON text byte-compatible with Go's ``json.Marshal`` for maps, strings, ints, bools and null."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return text.translate(_GO_ESCAPE_TABLE)


def encode_endpoint(instance: Instance) -> bytes:
    """The stored value of an instance."""
    # The outer object keeps Go's struct field order (Op, Addr, Metadata), so it is not key-sorted.
    addr = json.dumps(join_host_port(instance.address, instance.port), ensure_ascii=False).translate(
        _GO_ESCAPE_TABLE
    )
    return f'{{"Op":{OP_ADD},"Addr":{addr},"Metadata":{go_json(instance_to_dict(instance))}}}'.encode()


def is_ours(raw: bytes) -> bool:
    """Whether a stored value carries our canonical dict in ``Metadata`` (else another naming client wrote it)."""
    try:
        update = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    metadata = update.get("Metadata") if isinstance(update, Mapping) else None
    return isinstance(metadata, Mapping) and "schema" in metadata


def decode_endpoint(raw: bytes, namespace: str, service: str, key_segment: str) -> Instance | None:
    """The instance stored under ``<namespace>/<service>/<key_segment>``, or ``None`` when it cannot be decoded.

    A value whose ``Metadata`` is our canonical dict is read losslessly; its id must be the key segment. A
    plain endpoint written by another etcd naming client (``Metadata`` null or foreign, e.g. a Go service's
    ``<target>/<host:port>``) is a read-only ``UP`` instance at ``Addr`` whose id is the key segment, escaped
    reversibly where it is not a valid id (:func:`discovery.core.foreign.foreign_instance_id`:
    ``10.0.0.1:8080`` → ``10.0.0.1_x3a8080``). Deletion updates (``Op`` 1), non-JSON values, an ``Addr``
    without a port, and records whose embedded identity contradicts the key are skipped, each with one DEBUG
    line (the result is cached, so a re-list does not log it again).
    """
    def skipped(reason: str) -> None:  # the key is formatted only for a record that is skipped
        log_skipped(log, f"etcd key {namespace}/{service}/{key_segment[:160]!r}", reason)

    try:
        # UTF-8 decoded here: json.loads on bytes first guesses among UTF-8/16/32, which it keeps for the rest.
        update = json.loads(raw.decode())
    except UnicodeDecodeError:
        try:
            update = json.loads(raw)
        except ValueError:
            skipped("the value is not JSON")
            return None
    except ValueError:
        skipped("the value is not JSON")
        return None
    if not isinstance(update, dict):
        skipped("the value is not a JSON object")
        return None
    if update.get("Op", OP_ADD) != OP_ADD:
        skipped(f"Op is {str(update.get('Op'))[:20]!r}, not an add")
        return None
    metadata = update.get("Metadata")
    try:
        if isinstance(metadata, dict) and "schema" in metadata:
            instance = instance_from_dict(metadata)
            if instance.key != (namespace, service, key_segment):
                skipped("its Metadata names another namespace, service or id")
                return None
            return instance
        addr = update.get("Addr")
        host_port = split_host_port(addr) if isinstance(addr, str) else None
        if host_port is None:
            skipped("Addr is not host:port")
            return None
        return Instance(
            service=service,
            id=foreign_instance_id(key_segment),
            address=host_port[0],
            port=host_port[1],
            namespace=namespace,
        )
    except ValidationError as error:
        skipped(str(error))
        return None


#: ``decode_endpoint`` with its results shared. Decoding validates every field (addresses, labels); every
#: watch of a service in this process, and every re-list, decodes the same bytes again, and an Instance is
#: immutable. 4096 entries of a few hundred bytes each.
decode_endpoint_cached = functools.lru_cache(maxsize=4096)(decode_endpoint)
