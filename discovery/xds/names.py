"""What an ``xds:///<name>`` target means, and the xDS resource names derived from it.

* ``orders`` - the UP instances of registry service ``orders`` in the ``default`` namespace;
* ``orders.payments`` - the same in namespace ``payments``;
* ``<svc>.<ns>.svc.cluster.local:<port>`` - Service ``<svc>`` of namespace ``<ns>`` (the Service layer): its
  selector's endpoints on that Service port's target port (``:<port>`` may be left out when the Service has
  exactly one port).

gRPC asks for a Listener named exactly like the target's path and matches the target against the virtual host
domains of the route configuration. Every other resource name is derived here and parses back with the same
function, because a client that reconnects re-subscribes to its Route, Cluster and endpoint names directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from discovery.core.errors import ValidationError
from discovery.core.models import DEFAULT_NAMESPACE
from discovery.core.validation import validate_dns_label, validate_port
from discovery.services.model import CLUSTER_DOMAIN

MAX_TARGET_LENGTH = 300


@dataclass(frozen=True, slots=True)
class RegistryTarget:
    """The UP instances of one registry service."""

    namespace: str
    service: str

    @property
    def cluster_name(self) -> str:
        """The canonical Cluster (and endpoint assignment) name: ``<service>.<namespace>``."""
        return f"{self.service}.{self.namespace}"


@dataclass(frozen=True, slots=True)
class ServiceTarget:
    """A port of a Service of the Service layer. ``port`` is ``None`` when the target named none."""

    namespace: str
    name: str
    port: int | None
    domain: str = CLUSTER_DOMAIN

    @property
    def host(self) -> str:
        """``<name>.<namespace>.svc.<domain>``."""
        return f"{self.name}.{self.namespace}.svc.{self.domain}"

    def cluster_name_for(self, port: int) -> str:
        """The canonical Cluster name of one of the Service's ports."""
        return f"{self.host}:{port}"


Target = RegistryTarget | ServiceTarget


def parse_target(name: str, domain: str = CLUSTER_DOMAIN) -> Target:
    """Parse an ``xds:///`` target path (also a Listener, Route or Cluster name).

    Raises :class:`ValidationError` (field ``target``) for a name that means nothing here.
    """
    if not isinstance(name, str) or not name:
        raise ValidationError("target", "must be a non-empty string")
    if len(name) > MAX_TARGET_LENGTH:
        raise ValidationError("target", f"is longer than {MAX_TARGET_LENGTH} characters")
    if name.startswith("xds:"):
        raise ValidationError("target", "give the path of the xds:/// target, without the scheme")
    zone = f".svc.{domain}"
    host, colon, port_text = name.rpartition(":") if ":" in name else (name, "", "")
    try:
        if host.endswith(zone):
            parts = host[: -len(zone)].split(".")
            if len(parts) != 2:
                raise ValidationError("target", f"expected <service>.<namespace>{zone}[:<port>]")
            port = _port(port_text) if colon else None
            return ServiceTarget(validate_dns_label("target", parts[1]), validate_dns_label("target", parts[0]),
                                 port, domain)
        if colon:
            raise ValidationError("target", f"a port is only meaningful on <service>.<namespace>{zone} names")
        parts = name.split(".")
        if len(parts) > 2:
            raise ValidationError("target", f"expected <service>, <service>.<namespace> or "
                                            f"<service>.<namespace>{zone}:<port>")
        namespace = parts[1] if len(parts) == 2 else DEFAULT_NAMESPACE
        return RegistryTarget(validate_dns_label("target", namespace), validate_dns_label("target", parts[0]))
    except ValidationError as bad:
        raise ValidationError("target", bad.reason) from None


def _port(text: str) -> int:
    if not text.isdigit():
        raise ValidationError("target", "the port must be a number")
    return validate_port("target", int(text))
