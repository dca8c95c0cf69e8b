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

from discovery.core import validation
from discovery.core.errors import DiscoveryError, ValidationError, clipped
from discovery.core.models import DEFAULT_NAMESPACE
from discovery.services.model import HEADLESS, Service, ServicePort, ServiceType, validate_service_ip

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
#: Problems ``str(ManifestErrors)`` lists (the rest are counted): a bounded message for any input.
_MAX_LISTED_PROBLEMS = 200


class ManifestError(ValidationError):
    """A document is not a usable manifest (not YAML, not a mapping, wrong kind...)."""


SUPPORTED_FIELDS = (
    f"metadata.{{name,namespace,labels,annotations}}, spec.{{{','.join(sorted(_SPEC_FIELDS))}}}, "
    f"spec.ports[].{{{','.join(sorted(_PORT_FIELDS))}}}"
)


class UnsupportedFieldError(ValidationError):
    """The manifest uses fields this implementation does not support; ``fields`` lists their paths."""

    def __init__(self, fields: Iterable[str], source: str = "") -> None:
        self.fields = tuple(fields)
        where = f" in {source}" if source else ""
        named = ", ".join(self.fields[:_MAX_NAMED_FIELDS])
        if len(self.fields) > _MAX_NAMED_FIELDS:
            named += f" and {len(self.fields) - _MAX_NAMED_FIELDS} more"
        super().__init__(self.fields[0], f"unsupported field(s){where}: {named} (supported: {SUPPORTED_FIELDS})")

    def __str__(self) -> str:
        return self.reason  # it names every field already; "<first field>: " in front would repeat one


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """One problem of one manifest document: where (``source``, e.g. ``web.yaml#2``), which field, what is wrong.

    ``unsupported`` marks a field this implementation does not support (its ``reason`` is "is not supported").
    Immutable: safe to share between threads.
    """

    source: str
    field: str
    reason: str
    unsupported: bool = False

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.field}: {self.reason}"


class ManifestErrors(ManifestError):
    """Every problem of every document of one apply, found before anything is written; each is listed once.

    ``problems`` holds them in document order; ``str()`` is one line per problem (``web.yaml#2:
    spec.ports[0].port: 80000 is outside 1-65535``), then the supported fields once if a field was unsupported.
    ``field`` and ``reason`` are the first problem's.
    """

    def __init__(self, problems: Iterable[ManifestProblem]) -> None:
        self.problems = tuple(dict.fromkeys(problems))  # each once, in order
        if not self.problems:
            raise ValueError("ManifestErrors needs at least one problem")
        super().__init__(self.problems[0].field, self.problems[0].reason)

    def __str__(self) -> str:
        lines = [str(problem) for problem in self.problems[:_MAX_LISTED_PROBLEMS]]
        if len(self.problems) > _MAX_LISTED_PROBLEMS:
            lines.append(f"... and {len(self.problems) - _MAX_LISTED_PROBLEMS} more problem(s)")
        if any(problem.unsupported for problem in self.problems):
            lines.append(f"(supported fields: {SUPPORTED_FIELDS})")
        return "\n".join(lines)


def problems_of(error: ValidationError, source: str = "") -> list[ManifestProblem]:
    """The problems an error stands for: one per unsupported field, all of a :class:`ManifestErrors`, else one."""
    if isinstance(error, ManifestErrors):
        return list(error.problems)
    if isinstance(error, UnsupportedFieldError):
        named = [ManifestProblem(source, name, "is not supported", unsupported=True)
                 for name in error.fields[:_MAX_NAMED_FIELDS]]
        if len(error.fields) > _MAX_NAMED_FIELDS:
            more = len(error.fields) - _MAX_NAMED_FIELDS
            named.append(ManifestProblem(source, "...", f"and {more} more unsupported field(s)", unsupported=True))
        return named
    return [ManifestProblem(source, error.field, error.reason)]


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

    Every field is checked before anything is reported, so one error names every problem of the document: a
    single one raises its :class:`ValidationError` naming the field (``spec.ports[0].port``), an
    :class:`UnsupportedFieldError` listing unsupported fields, or a :class:`ManifestError` for a document that is
    not a Service at all; several raise :class:`ManifestErrors` listing each.
    """
    loaded, errors = _read_document(document, default_namespace, source)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ManifestErrors(problem for error in errors for problem in problems_of(error, source))
    assert loaded is not None  # no error means a Service was built
    return loaded


class _Problems:
    """Collects the errors of one document; :meth:`check` runs one independent check."""

    def __init__(self) -> None:
        self.errors: list[ValidationError] = []

    def check(self, where: str, check: Any, value: object, fallback: Any = None) -> Any:
        """``check(value)``, or ``fallback`` after noting its error (renamed to ``where`` when it names another)."""
        try:
            return check(value)
        except ValidationError as bad:
            field = bad.field if bad.field.startswith(where) else where
            self.errors.append(bad if field == bad.field else ValidationError(field, bad.reason))
            return fallback


def _read_document(
    document: object, default_namespace: str, source: str
) -> tuple[LoadedService | None, list[ValidationError]]:
    """The Service of a document, or ``None`` and every problem found (independent fields first, each once)."""
    if not isinstance(document, Mapping):
        return None, [ManifestError("manifest", f"expected a mapping (a YAML object), got {type(document).__name__}")]
    kind = document.get("kind")
    if kind != KIND:  # clipped: the value may be a whole (expanded) document
        return None, [ManifestError("kind", f"{clipped(kind)} is not supported; only kind: {KIND} can be applied")]
    problems = _Problems()
    if document.get("apiVersion") != API_VERSION:
        problems.errors.append(ManifestError(
            "apiVersion", f"{clipped(document.get('apiVersion'))} is not supported; use apiVersion: v1"))
    warnings: list[str] = []
    unsupported: list[str] = []
    _unsupported("", document, _TOP_FIELDS | _OUTPUT_ONLY_TOP, unsupported)
    if "status" in document:
        warnings.append("status: output-only, ignored")
    metadata = problems.check("metadata", lambda v: _mapping("metadata", v), document.get("metadata"), {})
    _unsupported("metadata", metadata, _METADATA_FIELDS | _OUTPUT_ONLY_METADATA, unsupported)
    warnings.extend(f"metadata.{k}: output-only, ignored" for k in sorted(set(metadata) & _OUTPUT_ONLY_METADATA))
    spec = problems.check("spec", lambda v: _mapping("spec", v), document.get("spec"), {})
    _unsupported("spec", spec, _SPEC_FIELDS, unsupported)
    raw_ports = problems.check("spec.ports", _list_of("spec.ports"), spec.get("ports", []), None)
    for n, raw_port in enumerate(raw_ports or ()):
        if isinstance(raw_port, Mapping):
            _unsupported(f"spec.ports[{n}]", raw_port, _PORT_FIELDS, unsupported)
    if unsupported:
        problems.errors.append(UnsupportedFieldError(unsupported, source))

    fields: dict[str, Any] = {}
    if "name" not in metadata:
        problems.errors.append(ValidationError("metadata.name", "is required"))
    fields["name"] = problems.check("metadata.name", _dns_label("metadata.name"), metadata.get("name", "x"), "x")
    fields["namespace"] = problems.check(
        "metadata.namespace", _dns_label("metadata.namespace"), metadata.get("namespace", default_namespace),
        DEFAULT_NAMESPACE)
    for key, where in (("labels", "metadata.labels"), ("annotations", "metadata.annotations"),
                       ("selector", "spec.selector")):
        part = spec if where.startswith("spec") else metadata
        value = problems.check(where, lambda v, w=where: _mapping(w, v, optional=True), part.get(key), {})
        checks = validation.validate_labels if key != "annotations" else (lambda v: v)
        fields[key] = problems.check(where, checks, value, {})
    raw_type = spec.get("type", ServiceType.CLUSTER_IP.value)
    service_type = problems.check("spec.type", _service_type, raw_type)
    ports: list[ServicePort | None] = []
    for n, raw in enumerate(raw_ports or ()):
        if not isinstance(raw, Mapping):
            problems.errors.append(ValidationError(f"spec.ports[{n}]", f"must be a mapping, got {type(raw).__name__}"))
            ports.append(None)
            continue
        port, port_errors = _port(n, raw)
        ports.append(port)
        problems.errors.extend(port_errors)
    external_ips = problems.check("spec.externalIPs", _list_of("spec.externalIPs"), spec.get("externalIPs") or [], [])
    checked_ips = [problems.check(f"spec.externalIPs[{n}]", _ip(f"spec.externalIPs[{n}]"), ip)
                   for n, ip in enumerate(external_ips or ())]
    fields["external_ips"] = tuple(ip for ip in checked_ips if ip is not None)  # the valid ones, for the checks below
    cluster_ip = spec.get("clusterIP")
    if cluster_ip == "":
        cluster_ip = None  # Kubernetes: empty means "allocate one"
    if cluster_ip not in (None, HEADLESS):
        cluster_ip = problems.check("spec.clusterIP", _ip("spec.clusterIP"), cluster_ip)
    load_balancer_ip = spec.get("loadBalancerIP")
    if load_balancer_ip is not None:
        load_balancer_ip = problems.check("spec.loadBalancerIP", _ip("spec.loadBalancerIP"), load_balancer_ip)
    valid_ports = tuple(port for port in ports if port is not None)
    if service_type is None or raw_ports is None or len(valid_ports) != len(ports):
        return None, problems.errors  # what the type and the ports imply cannot be checked without them
    try:  # the checks between fields (type against ports, names, addresses), on the fields that are valid
        service = Service(
            ports=valid_ports, type=service_type, cluster_ip=cluster_ip, load_balancer_ip=load_balancer_ip,
            external_name=spec.get("externalName"), **{k: v for k, v in fields.items() if v is not None},
        )
    except ValidationError as bad:
        if (bad.field, bad.reason) not in {(e.field, e.reason) for e in problems.errors}:
            problems.errors.append(bad)
        return None, problems.errors
    if problems.errors:
        return None, problems.errors
    return LoadedService(service, tuple(warnings), source), []


def _list_of(where: str) -> Any:
    def check(value: object) -> list[Any]:
        if not isinstance(value, list):
            raise ValidationError(where, f"must be a list, got {type(value).__name__}")
        return value

    return check


def _dns_label(where: str) -> Any:
    return lambda value: validation.validate_dns_label(where, value)


def _ip(where: str) -> Any:
    return lambda value: validate_service_ip(where, value)


def _service_type(value: object) -> ServiceType:
    try:
        return ServiceType(value)  # type: ignore[arg-type]  # any value: the enum refuses what is not a type
    except (ValueError, TypeError):
        raise ValidationError(
            "spec.type", f"{clipped(value)} is not one of {', '.join(t.value for t in ServiceType)}"
        ) from None


_PORT_DEFAULTS: dict[str, Any] = {"port": 1, "target_port": None, "name": None, "protocol": "TCP", "node_port": None}
_PORT_KEYS = {"port": "port", "targetPort": "target_port", "name": "name", "protocol": "protocol",
              "nodePort": "node_port"}


def _port(n: int, raw: Mapping[str, Any]) -> tuple[ServicePort | None, list[ValidationError]]:
    """The port of ``spec.ports[n]``, or every problem of it: each field is checked alone (the others at safe
    defaults), so a bad port number and a bad protocol are both reported."""
    where = f"spec.ports[{n}]"
    errors: list[ValidationError] = []
    if "port" not in raw:
        errors.append(ValidationError(f"{where}.port", "is required"))
    fields: dict[str, Any] = {}
    for key, name in _PORT_KEYS.items():
        if key not in raw:
            continue
        value = raw[key]
        if key in ("name", "protocol") and value is not None and not isinstance(value, str):
            errors.append(ValidationError(f"{where}.{key}", f"must be a string, got {type(value).__name__}"))
            continue
        try:
            ServicePort.build(where, **{**_PORT_DEFAULTS, name: value})
        except ValidationError as bad:
            errors.append(bad)
            continue
        fields[name] = value
    if errors:
        return None, errors
    return ServicePort.build(where, **{**_PORT_DEFAULTS, **fields}), []


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
        reason = " ".join(str(bad).split())  # PyYAML's message spans lines; one problem is one line
        raise ManifestError("manifest", f"{where} is not valid YAML: {reason[:_MAX_ERROR_TEXT]}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as bad:  # e.g. an integer too long to convert
        raise ManifestError("manifest", f"{where} holds a value that cannot be read: {type(bad).__name__}") from None


def parse_manifests(text: str, *, default_namespace: str = DEFAULT_NAMESPACE, source: str = "") -> list[LoadedService]:
    """Every Service in a (multi-document) YAML text; empty documents are skipped, ``kind: List`` is unpacked.

    Every document is read before anything is reported: the problems of all of them are raised together as one
    :class:`ManifestErrors`, each prefixed with its position (``source#2``) when there are several documents. A
    text that is not YAML at all (or too large, or an alias bomb) is one :class:`ManifestError`. The same Service
    (namespace and name) twice is an error: applying both would silently keep the second.
    """
    return parse_manifest_texts([(text, source)], default_namespace=default_namespace)


def parse_manifest_texts(
    texts: Iterable[tuple[str, str]], *, default_namespace: str = DEFAULT_NAMESPACE
) -> list[LoadedService]:
    """:func:`parse_manifests` over several ``(text, source)`` pairs (files, stdin) as one apply: every problem of
    every text and document in one :class:`ManifestErrors`, then the Services in order.
    """
    loaded: list[LoadedService] = []
    problems: list[ManifestProblem] = []
    unreadable: list[ManifestError] = []
    for text, source in texts:
        try:
            documents = _load_documents(text, source)
        except ManifestError as bad:  # the whole text; the reason names the source already
            unreadable.append(bad)
            problems.append(ManifestProblem("", bad.field, bad.reason))
            continue
        if not documents:
            problems.append(ManifestProblem(source or "input", "manifest", "holds no document"))
        for n, document in enumerate(documents, start=1):
            label = f"{source}#{n}" if len(documents) > 1 else source
            if isinstance(document, Mapping) and document.get("kind") == "List":
                items = document.get("items") or []
                if not isinstance(items, list):
                    problems.append(ManifestProblem(label, "items", f"a List's items must be a list, got "
                                                    f"{type(items).__name__}"))
                    continue
                entries = [(item, f"{label}.items[{i}]" if label else f"items[{i}]") for i, item in enumerate(items)]
            else:
                entries = [(document, label)]
            for entry, where in entries:
                service, errors = _read_document(entry, default_namespace, where)
                problems.extend(problem for error in errors for problem in problems_of(error, where))
                if service is not None:
                    loaded.append(service)
    if len(unreadable) == 1 and len(problems) == 1:
        raise unreadable[0]  # one text that is no YAML (or a bomb): its own error, as it was raised
    if problems:
        raise ManifestErrors(problems)
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
    "ManifestErrors",
    "ManifestProblem",
    "MissingExtraError",
    "UnsupportedFieldError",
    "check_unique",
    "decode_service",
    "encode_service",
    "parse_manifest_texts",
    "parse_manifests",
    "problems_of",
    "service_from_manifest",
    "service_to_manifest",
]
