"""``ServiceStore``: Service definitions kept durably in the backend (kind ``services``).

``apply`` works like ``kubectl apply`` for one object: it creates or replaces the Service, keeps what was
allocated before (the ClusterIP is immutable; a node port stays unless the manifest names another) and
allocates what is missing. Every check runs before anything is written.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from discovery.core.backend import Backend
from discovery.core.definitions import DefinitionStore, StoredDefinition
from discovery.core.errors import UnsupportedOperationError, ValidationError
from discovery.core.models import DEFAULT_NAMESPACE
from discovery.core.validation import validate_dns_label
from discovery.services.allocation import AllocationRanges
from discovery.services.manifest import decode_service, encode_service
from discovery.services.model import HEADLESS, Service, ServicePort, ServiceType

log = logging.getLogger("discovery.services")

KIND = "services"


class ApplyAction(enum.StrEnum):
    """What ``apply`` did (the words ``kubectl`` prints)."""

    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The Service as stored (allocations filled in) and what happened."""

    service: Service
    action: ApplyAction


@dataclass(frozen=True, slots=True)
class ServiceSet:
    """Every Service of a watch at one moment; ``stale`` while the backend is unreachable."""

    services: tuple[Service, ...]
    stale: bool = False

    def get(self, namespace: str, name: str) -> Service | None:
        """The Service ``namespace/name`` if present."""
        for service in self.services:
            if service.key == (namespace, name):
                return service
        return None


def decode_stored(items: tuple[StoredDefinition, ...]) -> tuple[Service, ...]:
    """Decode stored definitions, skipping (with a warning) any that are not valid Services."""
    services = []
    for item in items:
        try:
            service = decode_service(item.data, f"stored Service {item.namespace}/{item.name}")
        except ValidationError as bad:
            log.warning("skipping stored Service %s/%s: %s", item.namespace, item.name, bad)
            continue
        if service.key != (item.namespace, item.name):
            log.warning("skipping stored Service %s/%s: it names itself %s/%s", item.namespace, item.name,
                        *service.key)
            continue
        services.append(service)
    return tuple(services)


class ServiceStore:
    """Create, read, delete and watch Services in one backend (async; use on the registry's loop)."""

    def __init__(self, backend: Backend, ranges: AllocationRanges | None = None) -> None:
        self._backend = backend
        self.ranges = ranges or AllocationRanges.from_text()

    def _definitions(self) -> DefinitionStore:
        definitions = self._backend.definitions
        if definitions is None:
            raise UnsupportedOperationError(
                f"the {self._backend.capabilities.name} backend cannot store Service definitions"
            )
        return definitions

    async def get(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> Service | None:
        """The stored Service, or ``None``."""
        definitions = self._definitions()
        validate_dns_label("name", name)
        validate_dns_label("namespace", namespace)
        data = await definitions.get(KIND, namespace, name)
        return None if data is None else decode_service(data, f"stored Service {namespace}/{name}")

    async def list(self, namespace: str | None = DEFAULT_NAMESPACE) -> tuple[Service, ...]:
        """Services of a namespace (``None`` = all), sorted by namespace and name."""
        definitions = self._definitions()
        if namespace is not None:
            validate_dns_label("namespace", namespace)
        return decode_stored(await definitions.list(KIND, namespace))

    async def delete(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> bool:
        """Delete a Service; ``True`` if it existed."""
        definitions = self._definitions()
        validate_dns_label("name", name)
        validate_dns_label("namespace", namespace)
        return await definitions.delete(KIND, namespace, name)

    async def watch(self, namespace: str | None = None) -> AsyncIterator[ServiceSet]:
        """The current Services (of a namespace, or all), then the whole set after every change."""
        async for snapshot in self._definitions().watch(KIND, namespace):
            yield ServiceSet(decode_stored(snapshot.items), snapshot.stale)

    async def apply(self, service: Service) -> ApplyResult:
        """Create or replace ``service``, allocating its ClusterIP and node ports when absent.

        Raises :class:`ValidationError` naming the field (immutable ClusterIP, a taken address or node port,
        a node port outside the range); nothing is written then.
        """
        definitions = self._definitions()
        existing = await self.get(service.name, service.namespace)
        others = [s for s in await self.list(None) if s.key != service.key]
        stored = replace(
            service,
            cluster_ip=self._cluster_ip(service, existing, others),
            ports=self._node_ports(service, existing, others),
        )
        if existing == stored:
            return ApplyResult(stored, ApplyAction.UNCHANGED)
        await definitions.put(KIND, stored.namespace, stored.name, encode_service(stored))
        return ApplyResult(stored, ApplyAction.CREATED if existing is None else ApplyAction.CONFIGURED)

    def _cluster_ip(self, service: Service, existing: Service | None, others: Sequence[Service]) -> str | None:
        if service.type is ServiceType.EXTERNAL_NAME:
            return None
        previous = existing.cluster_ip if existing is not None and existing.type is not ServiceType.EXTERNAL_NAME \
            else None
        requested = service.cluster_ip
        if requested is not None and previous is not None and requested != previous:
            raise ValidationError(
                "spec.clusterIP", f"is immutable: the Service has {previous}; delete it first to change it"
            )
        if requested is None and previous == HEADLESS:
            raise ValidationError("spec.clusterIP", "is immutable: the Service is headless (None); delete it first")
        chosen = requested or previous
        used = {s.virtual_ip for s in others if s.virtual_ip is not None}
        if chosen is not None:
            if chosen != HEADLESS and chosen in used:
                owner = next(s for s in others if s.virtual_ip == chosen)
                raise ValidationError("spec.clusterIP", f"{chosen} is already allocated to {owner.namespace}/"
                                      f"{owner.name}")
            return chosen
        return self.ranges.allocate_cluster_ip(f"{service.namespace}/{service.name}", used)

    def _node_ports(
        self, service: Service, existing: Service | None, others: Sequence[Service]
    ) -> tuple[ServicePort, ...]:
        if not service.type.has_node_ports:
            return service.ports
        used = {p.node_port: s for s in others for p in s.ports if p.node_port is not None}
        taken_here: set[int] = set()
        ports = []
        for n, port in enumerate(service.ports):
            where = f"spec.ports[{n}].nodePort"
            node_port = port.node_port
            if node_port is not None:
                self.ranges.check_node_port(where, node_port)
            elif existing is not None and (old := existing.port(port.name or port.port)) is not None:
                node_port = old.node_port
            if node_port is not None and (node_port in used or node_port in taken_here):
                owner = used.get(node_port)
                holder = f"{owner.namespace}/{owner.name}" if owner is not None else "another port of this Service"
                if port.node_port is not None:
                    raise ValidationError(where, f"{node_port} is already allocated to {holder}")
                node_port = None  # the old one was taken meanwhile: allocate afresh
            if node_port is None:
                node_port = self.ranges.allocate_node_port(
                    f"{service.namespace}/{service.name}/{port.label}", set(used) | taken_here
                )
            taken_here.add(node_port)
            ports.append(replace(port, node_port=node_port))
        return tuple(ports)
