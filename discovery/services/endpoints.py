"""Endpoints of a Service: the UP instances of its namespace whose labels match its selector, per port,
with the target port resolved (a number, or the instance's named port of that name).

An instance that lacks a named target port is not an endpoint of that port (Kubernetes does the same).
A Service without a selector has no endpoints.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from discovery.core.models import Instance, Status
from discovery.core.selectors import parse_selector
from discovery.services.model import Service, ServicePort

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def endpoint_hostname(instance_id: str) -> str:
    """A DNS label for an instance id: the id itself when it is one, else ``ep-<hash>``."""
    if _DNS_LABEL.fullmatch(instance_id):
        return instance_id
    return "ep-" + hashlib.sha256(instance_id.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address:port that a Service port forwards to.

    Immutable: safe to share between threads.
    """

    instance: Instance
    port: int

    @property
    def address(self) -> str:
        """The instance's address."""
        return self.instance.address

    @property
    def hostname(self) -> str:
        """The DNS label of this endpoint (see :func:`endpoint_hostname`)."""
        return endpoint_hostname(self.instance.id)


@dataclass(frozen=True, slots=True)
class PortEndpoints:
    """The endpoints of one Service port.

    Immutable: safe to share between threads.
    """

    port: ServicePort
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The endpoints of a Service, port by port. ``stale`` when some instance data is stale.

    Immutable: safe to share between threads.
    """

    namespace: str
    name: str
    ports: tuple[PortEndpoints, ...]
    instances: tuple[Instance, ...]
    stale: bool = False

    def for_port(self, port: ServicePort | str | int) -> tuple[Endpoint, ...]:
        """The endpoints of a port (by object, name or service port number); ``()`` if there is none."""
        for entry in self.ports:
            if port in (entry.port, entry.port.name, entry.port.port, str(entry.port.port)):
                return entry.endpoints
        return ()

    @property
    def addresses(self) -> tuple[str, ...]:
        """The distinct addresses of the selected instances, sorted (headless DNS answers)."""
        return tuple(sorted({i.address for i in self.instances}))

    def __len__(self) -> int:
        return len(self.instances)


def target_port(port: ServicePort, instance: Instance) -> int | None:
    """The port on ``instance`` that ``port`` forwards to, or ``None`` when it has no such named port."""
    if isinstance(port.target_port, str):
        return instance.port_named(port.target_port)
    return port.target_port if port.target_port is not None else port.port


def selected(service: Service, instances: Iterable[Instance]) -> tuple[Instance, ...]:
    """The UP instances of the Service's namespace that its selector matches, by id (none without a selector)."""
    if not service.selector:
        return ()
    selector = parse_selector(service.selector)
    chosen = {
        (i.service, i.id): i
        for i in instances
        if i.namespace == service.namespace and i.status is Status.UP and selector.matches(i.labels)
    }
    return tuple(sorted(chosen.values(), key=lambda i: (i.id, i.service)))


def resolve_endpoints(service: Service, instances: Iterable[Instance], *, stale: bool = False) -> Endpoints:
    """The Service's endpoints among ``instances`` (any namespace/service; filtered here)."""
    chosen = selected(service, instances)
    ports = []
    for port in service.ports:
        endpoints = []
        for instance in chosen:
            resolved = target_port(port, instance)
            if resolved is not None:
                endpoints.append(Endpoint(instance, resolved))
        ports.append(PortEndpoints(port, tuple(endpoints)))
    return Endpoints(service.namespace, service.name, tuple(ports), chosen, stale)
