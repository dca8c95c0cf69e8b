"""The Kubernetes ``Service`` model: a selector over instances, ports, one of four types.

Construction validates every field and raises :class:`discovery.ValidationError` whose ``field`` is the
manifest path (``spec.ports[0].targetPort``), so the same message serves a Python caller and a YAML author.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from discovery.core import validation
from discovery.core.errors import ValidationError, clipped
from discovery.core.models import DEFAULT_NAMESPACE

#: ``spec.clusterIP: None``: a headless Service (no virtual IP; DNS answers with the endpoints' addresses).
HEADLESS = "None"
#: The only protocol the proxy forwards.
TCP = "TCP"
CLUSTER_DOMAIN = "cluster.local"
_SOME_PORT = "spec.ports[?]"
#: Bounds that keep one definition (and the listeners it asks the proxy for) small.
MAX_PORTS = 64
MAX_EXTERNAL_IPS = 64
MAX_ANNOTATIONS_SIZE = 256 * 1024  # Kubernetes' limit for all annotations of an object together
_MAX_PORT_NAME = 15

class ServiceType(enum.StrEnum):
    """How a Service is exposed."""

    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_NAME = "ExternalName"

    @property
    def has_node_ports(self) -> bool:
        """NodePort and LoadBalancer Services also listen on a node port."""
        return self in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER)


def _reraise(prefix: str, error: ValidationError) -> ValidationError:
    return ValidationError(prefix, error.reason)


def validate_ip(field_name: str, value: object) -> str:
    """An IPv4 or IPv6 literal, normalised."""
    if not isinstance(value, str):
        raise ValidationError(field_name, f"must be an IP address string, got {type(value).__name__}")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValidationError(field_name, f"{clipped(value)} is not an IP address") from None


def validate_service_ip(field_name: str, value: object) -> str:
    """An address a Service may listen on: a unicast IP literal of one host.

    Refused: the unspecified address (``0.0.0.0``, ``::``: the proxy would bind every interface), multicast,
    broadcast and reserved (``240.0.0.0/4``), link-local (``169.254.0.0/16``, ``fe80::/10``), IPv6 scope ids, and
    IPv4-mapped IPv6 (``::ffff:a.b.c.d``, another spelling of an IPv4 address that ownership checks would miss).
    """
    text = validate_ip(field_name, value)
    if "%" in text:  # not echoed: a scope id may be any text
        raise ValidationError(field_name, "an address with a scope id (%...) cannot be a Service address")
    address = ipaddress.ip_address(text)
    reason = None
    if address.is_unspecified:
        reason = "is the unspecified address (it would listen on every interface)"
    elif address.is_multicast:
        reason = "is a multicast address"
    elif address.is_link_local:
        reason = "is a link-local address"
    elif isinstance(address, ipaddress.IPv4Address) and address.is_reserved:
        reason = "is a broadcast or reserved address"
    elif isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        reason = f"is an IPv4-mapped address; write {address.ipv4_mapped}"
    if reason is not None:
        raise ValidationError(field_name, f"{text} {reason}")
    return text


def _check_port_name(field_name: str, value: str) -> None:
    if len(value) > _MAX_PORT_NAME:  # checked here so that the message never echoes a long value
        raise ValidationError(field_name, f"a port name has at most {_MAX_PORT_NAME} characters, got {len(value)}")
    try:
        validation.validate_named_ports({value: 1})
    except ValidationError as bad:
        raise _reraise(field_name, bad) from None


def _validate_hostname(field_name: str, value: object) -> str:
    try:
        host = validation.validate_address(value)
    except ValidationError as bad:
        raise _reraise(field_name, bad) from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.rstrip(".").lower()
    raise ValidationError(field_name, f"{host!r} is an IP address; ExternalName needs a DNS name")


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of a Service: ``port`` on the Service's addresses forwards to ``target_port`` of each endpoint.

    ``target_port`` is a number, or the name of a port every instance declares in ``Instance.ports``.
    ``node_port`` is set for NodePort/LoadBalancer Services (allocated on apply when absent).

    Immutable: safe to share between threads.
    """

    port: int
    target_port: int | str | None = None
    name: str | None = None
    protocol: str = TCP
    node_port: int | None = None

    def __post_init__(self) -> None:
        self.validate(_SOME_PORT)

    @classmethod
    def build(cls, where: str, **fields: Any) -> ServicePort:
        """Construct, naming fields in errors below ``where`` (e.g. ``spec.ports[1]``)."""
        try:
            return cls(**fields)
        except ValidationError as bad:
            raise ValidationError(bad.field.replace(_SOME_PORT, where, 1), bad.reason) from None

    def validate(self, where: str) -> None:
        """Check the fields, naming them below ``where`` (e.g. ``spec.ports[1]``)."""
        validation.validate_port(f"{where}.port", self.port)
        if self.target_port is None:
            object.__setattr__(self, "target_port", self.port)
        elif isinstance(self.target_port, str):
            _check_port_name(f"{where}.targetPort", self.target_port)
        else:
            validation.validate_port(f"{where}.targetPort", self.target_port)
        if self.name is not None:
            if not isinstance(self.name, str):
                raise ValidationError(f"{where}.name", f"must be a string, got {type(self.name).__name__}")
            _check_port_name(f"{where}.name", self.name)
        if self.protocol != TCP:
            raise ValidationError(f"{where}.protocol", f"{clipped(self.protocol)} is not supported; only TCP is "
                                  "proxied")
        if self.node_port is not None:
            validation.validate_port(f"{where}.nodePort", self.node_port)

    @property
    def label(self) -> str:
        """The port's name, or its number when unnamed (used in DNS SRV names and tables)."""
        return self.name or str(self.port)


@dataclass(frozen=True, slots=True)
class Service:
    """A Kubernetes-style Service (see module docs). ``cluster_ip`` is ``None`` until allocated on apply,
    :data:`HEADLESS` for a headless Service.

    Immutable: safe to share between threads.
    """

    name: str
    namespace: str = DEFAULT_NAMESPACE
    selector: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[ServicePort, ...] = ()
    type: ServiceType = ServiceType.CLUSTER_IP
    cluster_ip: str | None = None
    external_ips: tuple[str, ...] = ()
    load_balancer_ip: str | None = None
    external_name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            validation.validate_dns_label("metadata.name", self.name)
            validation.validate_dns_label("metadata.namespace", self.namespace)
        except ValidationError as bad:
            raise bad from None
        self._set("labels", _checked_labels("metadata.labels", self.labels))
        self._set("annotations", _checked_annotations(self.annotations))
        self._set("selector", _checked_labels("spec.selector", self.selector))
        try:
            self._set("type", ServiceType(self.type))
        except (ValueError, TypeError):
            raise ValidationError(
                "spec.type", f"{clipped(self.type)} is not one of {', '.join(t.value for t in ServiceType)}"
            ) from None
        self._set("ports", tuple(self.ports))
        if len(self.ports) > MAX_PORTS:
            raise ValidationError("spec.ports", f"has {len(self.ports)} entries; at most {MAX_PORTS} are allowed")
        self._check_ports()
        external_ips = tuple(self.external_ips)
        if len(external_ips) > MAX_EXTERNAL_IPS:
            raise ValidationError("spec.externalIPs", f"has {len(external_ips)} entries; at most {MAX_EXTERNAL_IPS} "
                                  "are allowed")
        self._set("external_ips", tuple(validate_service_ip(f"spec.externalIPs[{n}]", ip)
                                        for n, ip in enumerate(external_ips)))
        self._check_type_fields()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _check_ports(self) -> None:
        names: set[str] = set()
        numbers: set[int] = set()
        for n, port in enumerate(self.ports):
            if not isinstance(port, ServicePort):
                raise ValidationError(f"spec.ports[{n}]", f"expected a ServicePort, got {type(port).__name__}")
            port.validate(f"spec.ports[{n}]")
            if len(self.ports) > 1 and port.name is None:
                raise ValidationError(f"spec.ports[{n}].name", "is required when a Service has several ports")
            if port.name is not None and port.name in names:
                raise ValidationError(f"spec.ports[{n}].name", f"{port.name!r} is used by another port")
            if port.port in numbers:
                raise ValidationError(f"spec.ports[{n}].port", f"{port.port} is used by another port")
            if port.node_port is not None and not self.type.has_node_ports:
                raise ValidationError(f"spec.ports[{n}].nodePort", f"is only allowed for NodePort and "
                                      f"LoadBalancer Services, not {self.type.value}")
            names.add(port.name or "")
            numbers.add(port.port)

    def _check_type_fields(self) -> None:
        if self.type is ServiceType.EXTERNAL_NAME:
            if self.external_name is None:
                raise ValidationError("spec.externalName", "is required for type ExternalName")
            self._set("external_name", _validate_hostname("spec.externalName", self.external_name))
            if self.cluster_ip not in (None, HEADLESS):
                raise ValidationError("spec.clusterIP", "must be empty for type ExternalName")
        else:
            if self.external_name is not None:
                raise ValidationError("spec.externalName", f"is only allowed for type ExternalName, "
                                      f"not {self.type.value}")
            if not self.ports:
                raise ValidationError("spec.ports", f"a {self.type.value} Service needs at least one port")
        if self.cluster_ip is not None and self.cluster_ip != HEADLESS:
            self._set("cluster_ip", validate_service_ip("spec.clusterIP", self.cluster_ip))
        if self.cluster_ip == HEADLESS and self.type.has_node_ports:
            raise ValidationError("spec.clusterIP", f"a {self.type.value} Service cannot be headless (None)")
        if self.load_balancer_ip is not None:
            if self.type is not ServiceType.LOAD_BALANCER:
                raise ValidationError("spec.loadBalancerIP", f"is only allowed for type LoadBalancer, "
                                      f"not {self.type.value}")
            self._set("load_balancer_ip", validate_service_ip("spec.loadBalancerIP", self.load_balancer_ip))

    @property
    def key(self) -> tuple[str, str]:
        """``(namespace, name)``."""
        return (self.namespace, self.name)

    @property
    def headless(self) -> bool:
        """Whether ``clusterIP: None``."""
        return self.cluster_ip == HEADLESS

    @property
    def virtual_ip(self) -> str | None:
        """The allocated ClusterIP (``None`` for headless and ExternalName Services)."""
        return None if self.cluster_ip in (None, HEADLESS) else self.cluster_ip

    def dns_name(self, domain: str = CLUSTER_DOMAIN) -> str:
        """``<name>.<namespace>.svc.<domain>``."""
        return f"{self.name}.{self.namespace}.svc.{domain}"

    def port(self, name_or_number: str | int) -> ServicePort | None:
        """The port with that name, or that service port number."""
        for port in self.ports:
            if name_or_number in (port.name, port.port, str(port.port)):
                return port
        return None

    def with_changes(self, **changes: Any) -> Service:
        """A validated copy with some fields replaced."""
        return replace(self, **changes)


def _checked_labels(where: str, value: object) -> Mapping[str, str]:
    if value is None:
        value = {}
    try:
        checked = validation.validate_labels(value)
    except ValidationError as bad:
        raise _reraise(where, bad) from None
    return MappingProxyType(dict(sorted(checked.items())))


def _checked_annotations(value: object) -> Mapping[str, str]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ValidationError("metadata.annotations", f"must be a mapping, got {type(value).__name__}")
    checked: dict[str, str] = {}
    size = 0
    for key, text in value.items():
        try:
            validation.validate_label_key("metadata.annotations", key)
        except ValidationError as bad:
            raise _reraise("metadata.annotations", bad) from None
        if not isinstance(text, str):
            raise ValidationError(f"metadata.annotations.{key}", f"must be a string, got {type(text).__name__}")
        size += len(key) + len(text)
        if size > MAX_ANNOTATIONS_SIZE:
            raise ValidationError("metadata.annotations", f"are larger than {MAX_ANNOTATIONS_SIZE // 1024} KiB in all")
        checked[key] = text
    return MappingProxyType(dict(sorted(checked.items())))
