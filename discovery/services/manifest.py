"""``apiVersion: v1, kind: Service`` manifests to :class:`Service` and back.

The same manifest form (as JSON) is what the backends store, so a stored definition reads like the YAML a
user applied plus what was allocated (``clusterIP``, ``nodePort``).

Fields are checked against the ones we implement: a field we do not implement is an
:class:`UnsupportedFieldError` naming every such field (nothing is applied), and output-only fields
(``status``, ``metadata.uid``...) are ignored with a warning, as ``kubectl apply`` ignores them.
YAML needs the optional ``[cli]`` extra (PyYAML); JSON documents work without it.

Input is bounded before it is expanded: a manifest text holds at most :data:`MAX_MANIFEST_SIZE` characters
and a stored definition :data:`MAX_DEFINITION_SIZE` bytes; YAML aliases (``*name``, the "billion laughs"
expansion) are refused, and so is nesting deeper than :data:`MAX_NESTING`, in YAML (checked on the event
stream, before any object is built) and in stored JSON. Error messages clip the values they quote: no error
ever holds the ``repr`` of a whole document.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from discovery.core.errors import DiscoveryError, ValidationError
from discovery.core.models import DEFAULT_NAMESPACE
from discovery.services.model import HEADLESS, Service, ServicePort, ServiceType, clipped

API_VERSION = "v1"
KIND = "Service"

_TOP_FIELDS = {"apiVersion", "kind", "metadata", "spec"}
_OUTPUT_ONLY_TOP = {"status"}
_METADATA_FIELDS = {"name", "namespace", "labels", "annotations"}
_OUTPUT_ONLY_METADATA = {"uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "selfLink"}
_SPEC_FIELDS = {"selector", "ports", "type", "clusterIP", "externalIPs", "loadBalancerIP", "externalName"}
_PORT_FIELDS = {"name", "port", "targetPort", "protocol", "nodePort"}
#: Values of fields we accept because they mean "the default behaviour" (what ``kubectl get -o yaml`` prints).
_DEFAULT_VALUED = {"sessionAffinity": "None", "internalTrafficPolicy": "Cluster", "externalTrafficPolicy": "Cluster"}
#: Characters of one manifest text (YAML, several documents): about 500 Services, read in about 0.5 s.
MAX_MANIFEST_SIZE = 256 * 1024
#: Bytes of one stored definition (JSON; decoded in C, so a larger bound costs little).
MAX_DEFINITION_SIZE = 1024 * 1024
#: Nesting levels of collections in one document (a Service manifest needs 5).
MAX_NESTING = 32
#: Unsupported fields named in one error (the rest are counted).
_MAX_NAMED_FIELDS = 20
_MAX_ERROR_TEXT = 300


class ManifestError(ValidationError):
    """A document is not a usable manifest (not YAML, not a mapping, wrong kind...)."""


class UnsupportedFieldError(ValidationError):
    """The manifest uses fields this implementation does not support; ``fields`` lists their paths."""

    def __init__(self, fields: Iterable[str], source: str = "") -> None:
        self.fields = tuple(fields)
        where = f" in {source}" if source else ""
        named = ", ".join(self.fields[:_MAX_NAMED_FIELDS])
        if len(self.fields) > _MAX_NAMED_FIELDS:
            named += f" and {len(self.fields) - _MAX_NAMED_FIELDS} more"
        super().__init__(
            self.fields[0],
            f"unsupported field(s){where}: {named} (supported: metadata.{{name,namespace,labels,"
            f"annotations}}, spec.{{{','.join(sorted(_SPEC_FIELDS))}}}, "
            f"spec.ports[].{{{','.join(sorted(_PORT_FIELDS))}}})",
        )


class MissingExtraError(DiscoveryError, ImportError):
    """An optional dependency (an extra) is not installed."""


@dataclass(frozen=True, slots=True)
class LoadedService:
    """A Service read from a manifest, with the warnings about fields that were ignored.

    Immutable: safe to share between threads.
    """

    service: Service
    warnings: tuple[str, ...] = ()
    source: str = ""


def _mapping(where: str, value: object, *, optional: bool = False) -> Mapping[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(where, f"must be a mapping, got {type(value).__name__}")
    return value


def _string(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(where, f"must be a string, got {type(value).__name__}")
    return value


def _unsupported(where: str, data: Mapping[str, Any], allowed: set[str], found: list[str]) -> None:
    for key in data:
        if key in allowed:
            continue
        if key in _DEFAULT_VALUED and data[key] == _DEFAULT_VALUED[key]:
            continue
        name = key if isinstance(key, str) and len(key) <= 60 and key.isprintable() else clipped(key)
        found.append(f"{where}.{name}" if where else name)


def service_from_manifest(
    document: object, *, default_namespace: str = DEFAULT_NAMESPACE, source: str = ""
) -> LoadedService:
    """Read one manifest document (an already parsed mapping) into a validated :class:`Service`.

    Raises :class:`ValidationError` naming the field (``spec.ports[0].port``), :class:`UnsupportedFieldError`
    listing unsupported fields, or :class:`ManifestError` for a document that is not a Service at all.
    """
    if not isinstance(document, Mapping):
        raise ManifestError("manifest", f"expected a mapping (a YAML object), got {type(document).__name__}")
    kind = document.get("kind")
    if kind != KIND:  # clipped: the value may be a whole (expanded) document
        raise ManifestError("kind", f"{clipped(kind)} is not supported; only kind: {KIND} can be applied")
    if document.get("apiVersion") != API_VERSION:
        raise ManifestError("apiVersion", f"{clipped(document.get('apiVersion'))} is not supported; use "
                            "apiVersion: v1")
    warnings: list[str] = []
    unsupported: list[str] = []
    _unsupported("", document, _TOP_FIELDS | _OUTPUT_ONLY_TOP, unsupported)
    if "status" in document:
        warnings.append("status: output-only, ignored")
    metadata = _mapping("metadata", document.get("metadata"))
    _unsupported("metadata", metadata, _METADATA_FIELDS | _OUTPUT_ONLY_METADATA, unsupported)
    warnings.extend(f"metadata.{k}: output-only, ignored" for k in sorted(set(metadata) & _OUTPUT_ONLY_METADATA))
    spec = _mapping("spec", document.get("spec"))
    _unsupported("spec", spec, _SPEC_FIELDS, unsupported)
    raw_ports = spec.get("ports", [])
    if not isinstance(raw_ports, list):
        raise ValidationError("spec.ports", f"must be a list, got {type(raw_ports).__name__}")
    for n, raw_port in enumerate(raw_ports):
        _unsupported(f"spec.ports[{n}]", _mapping(f"spec.ports[{n}]", raw_port), _PORT_FIELDS, unsupported)
    if unsupported:
        raise UnsupportedFieldError(unsupported, source)

    if "name" not in metadata:
        raise ValidationError("metadata.name", "is required")
    namespace = metadata.get("namespace", default_namespace)
    raw_type = spec.get("type", ServiceType.CLUSTER_IP.value)
    ports = tuple(_port(n, raw) for n, raw in enumerate(raw_ports))
    external_ips = spec.get("externalIPs") or []
    if not isinstance(external_ips, list):
        raise ValidationError("spec.externalIPs", f"must be a list, got {type(external_ips).__name__}")
    cluster_ip = spec.get("clusterIP")
    if cluster_ip == "":
        cluster_ip = None  # Kubernetes: empty means "allocate one"
    service = Service(
        name=_string("metadata.name", metadata["name"]),
        namespace=_string("metadata.namespace", namespace),
        selector=_mapping("spec.selector", spec.get("selector"), optional=True),
        ports=ports,
        type=_string("spec.type", raw_type),  # type: ignore[arg-type]  # validated into ServiceType
        cluster_ip=None if cluster_ip is None else _string("spec.clusterIP", cluster_ip),
        external_ips=tuple(external_ips),
        load_balancer_ip=spec.get("loadBalancerIP"),
        external_name=spec.get("externalName"),
        labels=_mapping("metadata.labels", metadata.get("labels"), optional=True),
        annotations=_mapping("metadata.annotations", metadata.get("annotations"), optional=True),
    )
    return LoadedService(service, tuple(warnings), source)


def _port(n: int, raw: Mapping[str, Any]) -> ServicePort:
    where = f"spec.ports[{n}]"
    if "port" not in raw:
        raise ValidationError(f"{where}.port", "is required")
    name = raw.get("name")
    return ServicePort.build(
        where,
        port=raw["port"],
        target_port=raw.get("targetPort"),
        name=None if name is None else _string(f"{where}.name", name),
        protocol=_string(f"{where}.protocol", raw.get("protocol", "TCP")),
        node_port=raw.get("nodePort"),
    )


def service_to_manifest(service: Service) -> dict[str, Any]:
    """The manifest form of a Service (what ``kubectl get -o yaml`` would show, minus status)."""
    metadata: dict[str, Any] = {"name": service.name, "namespace": service.namespace}
    if service.labels:
        metadata["labels"] = dict(service.labels)
    if service.annotations:
        metadata["annotations"] = dict(service.annotations)
    spec: dict[str, Any] = {"type": service.type.value}
    if service.selector:
        spec["selector"] = dict(service.selector)
    if service.ports:
        spec["ports"] = [_port_to_manifest(port) for port in service.ports]
    if service.cluster_ip is not None:
        spec["clusterIP"] = service.cluster_ip
    if service.external_ips:
        spec["externalIPs"] = list(service.external_ips)
    if service.load_balancer_ip is not None:
        spec["loadBalancerIP"] = service.load_balancer_ip
    if service.external_name is not None:
        spec["externalName"] = service.external_name
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


def _port_to_manifest(port: ServicePort) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if port.name is not None:
        out["name"] = port.name
    out.update(port=port.port, targetPort=port.target_port, protocol=port.protocol)
    if port.node_port is not None:
        out["nodePort"] = port.node_port
    return out


def encode_service(service: Service) -> bytes:
    """The stored form: compact, key-sorted manifest JSON."""
    return json.dumps(service_to_manifest(service), sort_keys=True, separators=(",", ":")).encode()


def decode_service(data: bytes, source: str = "stored definition") -> Service:
    """Read a stored definition back (raises :class:`ValidationError` for foreign or damaged data).

    Whatever the bytes (anyone with write access to the backend may have written them), the outcome is a
    Service or a :class:`ValidationError`, in time and memory bounded by :data:`MAX_DEFINITION_SIZE`.
    """
    if len(data) > MAX_DEFINITION_SIZE:
        raise ManifestError("definition", f"{source} is {len(data)} bytes; at most {MAX_DEFINITION_SIZE} are read")
    try:
        document = json.loads(data)
    except RecursionError:
        raise ManifestError("definition", f"{source} is nested too deeply") from None
    except ValueError as bad:  # also UnicodeDecodeError, and an integer too long to convert
        raise ManifestError("definition", f"{source} is not JSON: {str(bad)[:_MAX_ERROR_TEXT]}") from None
    if _depth_exceeds(document, MAX_NESTING):
        raise ManifestError("definition", f"{source} is nested deeper than {MAX_NESTING} levels")
    return service_from_manifest(document, source=source).service


def _depth_exceeds(document: object, limit: int) -> bool:
    """Whether collections nest deeper than ``limit`` (iterative: a deep document must not exhaust the stack)."""
    pending: list[tuple[object, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                return True
            children = value.values() if isinstance(value, dict) else value
            pending.extend((child, depth + 1) for child in children)
    return False


_ALIAS_REFUSED = "YAML aliases (*name) are not accepted in manifests; write the value out"


@functools.cache
def _bounded_loader() -> type[Any]:
    """PyYAML's pure-Python ``SafeLoader`` refusing aliases and deep nesting while composing (before anything is
    expanded); used when PyYAML was built without libyaml."""
    import yaml
    from yaml.composer import ComposerError

    class BoundedSafeLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ComposerError(None, None, _ALIAS_REFUSED, mark)
            self.depth += 1
            try:
                if self.depth > MAX_NESTING:
                    mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                    raise ComposerError(None, None, f"nested deeper than {MAX_NESTING} levels", mark)
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return BoundedSafeLoader


def _checked_events(text: str, loader: type[Any], where: str) -> None:
    """Scan the event stream of ``text`` (libyaml: fast, no objects built) for aliases and deep nesting."""
    import yaml

    def refuse(event: Any, reason: str) -> ManifestError:
        mark = event.start_mark
        return ManifestError("manifest", f"{where} line {mark.line + 1} column {mark.column + 1}: {reason}")

    opening = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
    closing = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    depth = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, opening):
            depth += 1
            if depth > MAX_NESTING:
                raise refuse(event, f"nested deeper than {MAX_NESTING} levels")
        elif isinstance(event, closing):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            raise refuse(event, _ALIAS_REFUSED)


def _load_documents(text: str, source: str) -> list[object]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - depends on the installation
        raise MissingExtraError(
            "reading YAML manifests needs PyYAML: pip install 'service-discovery[cli]'"
        ) from None
    where = source or "input"
    if len(text) > MAX_MANIFEST_SIZE:
        raise ManifestError("manifest", f"{where} is {len(text)} characters; at most {MAX_MANIFEST_SIZE} are read")
    try:
        if yaml.__with_libyaml__:
            # Two passes in C: the event scan refuses what could expand before libyaml builds any object.
            _checked_events(text, yaml.CSafeLoader, where)
            documents = yaml.load_all(text, Loader=yaml.CSafeLoader)
        else:  # pragma: no cover - PyYAML wheels include libyaml
            documents = yaml.load_all(text, Loader=_bounded_loader())  # checks while composing
        return [d for d in documents if d is not None]
    except ManifestError:
        raise
    except yaml.YAMLError as bad:
        raise ManifestError("manifest", f"{where} is not valid YAML: {str(bad)[:_MAX_ERROR_TEXT]}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as bad:  # e.g. an integer too long to convert
        raise ManifestError("manifest", f"{where} holds a value that cannot be read: {type(bad).__name__}") from None


def parse_manifests(text: str, *, default_namespace: str = DEFAULT_NAMESPACE, source: str = "") -> list[LoadedService]:
    """Every Service in a (multi-document) YAML text; empty documents are skipped.

    Raises the first document's error, prefixed with its position (``source#2``) when there are several. The
    same Service (namespace and name) twice is an error: applying both would silently keep the second.
    """
    documents = _load_documents(text, source)
    loaded: list[LoadedService] = []
    for n, document in enumerate(documents, start=1):
        label = f"{source}#{n}" if len(documents) > 1 else source
        if isinstance(document, Mapping) and document.get("kind") == "List":
            items = document.get("items") or []
            if not isinstance(items, list):
                raise ManifestError("items", f"{label or 'input'}: a List's items must be a list, got "
                                    f"{type(items).__name__}")
            loaded.extend(service_from_manifest(i, default_namespace=default_namespace, source=label) for i in items)
            continue
        loaded.append(service_from_manifest(document, default_namespace=default_namespace, source=label))
    if not loaded:
        raise ManifestError("manifest", f"{source or 'input'} holds no document")
    check_unique(loaded)
    return loaded


def check_unique(loaded: Iterable[LoadedService]) -> None:
    """Raise :class:`ManifestError` if two documents define the same Service (namespace and name)."""
    first: dict[tuple[str, str], str] = {}
    for item in loaded:
        key = item.service.key
        if key in first:
            raise ManifestError(
                "metadata.name", f"Service {key[0]}/{key[1]} is defined twice ({first[key] or 'input'} and "
                f"{item.source or 'input'}); nothing was applied"
            )
        first[key] = item.source


__all__ = [
    "HEADLESS",
    "MAX_MANIFEST_SIZE",
    "MAX_NESTING",
    "LoadedService",
    "ManifestError",
    "MissingExtraError",
    "UnsupportedFieldError",
    "check_unique",
    "decode_service",
    "encode_service",
    "parse_manifests",
    "service_from_manifest",
    "service_to_manifest",
]
