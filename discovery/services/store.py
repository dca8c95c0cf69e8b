"""``ServiceStore``: Service definitions kept durably in the backend (kind ``services``).

``apply`` works like ``kubectl apply`` for one object: it creates or replaces the Service, keeps what was
allocated before (the ClusterIP is immutable; a node port stays unless the manifest names another) and
allocates what is missing. ``apply_all`` does the same for every document of a file, checking all of them
before writing any. Every check runs before anything is written.

Addresses and ports are owned (the Kubernetes CVE-2020-8554 pattern, where one tenant's ``externalIPs`` took
another's traffic, is refused here): a ClusterIP belongs wholly to its Service, so no other Service may name it
as a ClusterIP, ``externalIPs`` entry or ``loadBalancerIP``; an external or load-balancer ``address:port``
belongs to the first Service that claimed it; a requested ClusterIP must lie in the configured range. A
conflict is a :class:`ServiceConflictError` naming both Services.
"""

from __future__ import annotations

import builtins
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
from discovery.services.manifest import ManifestError, ManifestErrors, decode_service, encode_service, problems_of
from discovery.services.model import HEADLESS, Service, ServicePort, ServiceType

log = logging.getLogger("discovery.services")

KIND = "services"


class ApplyAction(enum.StrEnum):
    """What ``apply`` did (the words ``kubectl`` prints)."""

    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"


class ServiceConflictError(ValidationError):
    """An address or port the Service asks for belongs to another Service; nothing was written.

    ``service`` and ``owner`` are the ``namespace/name`` of the refused Service and of the one that owns it.
    """

    def __init__(self, field: str, value: str, message: str, service: str, owner: str) -> None:
        # kubectl's wording: The Service "x" is invalid: <field>: Invalid value: "<value>": <why>
        super().__init__(field, f'Invalid value: "{value}": {message} (Service "{service}" is invalid; nothing '
                         "was written)")
        self.service = service
        self.owner = owner


@dataclass(frozen=True, slots=True)
class AddressClaim:
    """One address (and port, for external and load-balancer addresses) a Service asks to be served on."""

    address: str
    port: int | None  # None: the whole address (a ClusterIP)
    field: str
    kind: str

    def describe(self) -> str:
        """``127.10.0.5`` or ``80.11.12.11:80``."""
        return self.address if self.port is None else f"{self.address}:{self.port}"


def address_claims(service: Service) -> list[AddressClaim]:
    """What ``service`` asks to own: its ClusterIP (whole), and ``address:port`` per port for its
    ``loadBalancerIP`` and each ``externalIPs`` entry."""
    claims: list[AddressClaim] = []
    if service.virtual_ip is not None:
        claims.append(AddressClaim(service.virtual_ip, None, "spec.clusterIP", "clusterIP"))
    for port in service.ports:
        if service.load_balancer_ip is not None:
            claims.append(AddressClaim(service.load_balancer_ip, port.port, "spec.loadBalancerIP", "loadBalancerIP"))
        claims.extend(AddressClaim(ip, port.port, f"spec.externalIPs[{n}]", "externalIP")
                      for n, ip in enumerate(service.external_ips))
    return claims


def _overlaps(mine: AddressClaim, theirs: AddressClaim) -> bool:
    return mine.address == theirs.address and (mine.port is None or theirs.port is None or mine.port == theirs.port)


def check_ownership(service: Service, others: Sequence[Service]) -> None:
    """Raise :class:`ServiceConflictError` if ``service`` claims an address or ``address:port`` of another."""
    claimed = [(claim, other) for other in others for claim in address_claims(other)]
    for mine in address_claims(service):
        for theirs, other in claimed:
            if _overlaps(mine, theirs):
                owner = f"{other.namespace}/{other.name}"
                raise ServiceConflictError(
                    mine.field, mine.address,
                    f"{theirs.describe() if mine.port is None else mine.describe()} is already served by Service "
                    f'"{owner}" (its {theirs.kind})',
                    f"{service.namespace}/{service.name}", owner,
                )


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The Service as stored (allocations filled in) and what happened.

    Immutable: safe to share between threads.
    """

    service: Service
    action: ApplyAction


@dataclass(frozen=True, slots=True)
class ServiceSet:
    """Every Service of a watch at one moment; ``stale`` while the backend is unreachable.

    Immutable: safe to share between threads.
    """

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
        except ValidationError as bad:  # decode_service raises nothing else, whatever the bytes
            log.warning("skipping stored Service %s/%s: %s", item.namespace, item.name, bad)
            continue
        if service.key != (item.namespace, item.name):
            log.warning("skipping stored Service %s/%s: it names itself %s/%s", item.namespace, item.name,
                        *service.key)
            continue
        services.append(service)
    return tuple(services)


class ServiceStore:
    """Create, read, delete and watch Services in one backend (async; use on the registry's loop).

    Not thread-safe: use it on the event loop of the backend's registry.
    """

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

        Raises :class:`ValidationError` naming the field (immutable ClusterIP, a ClusterIP outside the range, a
        node port outside the range or taken) or :class:`ServiceConflictError` (an address another Service
        owns); nothing is written then.
        """
        [result] = await self.apply_all([service])
        return result

    async def apply_all(self, services: Sequence[Service]) -> tuple[ApplyResult, ...]:
        """Apply several Services as one change: every one is checked (against the stored Services and the
        ones before it) before any is written. The same Service twice is a :class:`ValidationError`.

        The writes themselves are one per Service: a backend failing in the middle of them leaves the earlier
        ones written (no backend offers a transaction across our definition keys).
        """
        definitions = self._definitions()
        seen: set[tuple[str, str]] = set()
        for service in services:
            if service.key in seen:
                raise ManifestError("metadata.name", f"Service {service.namespace}/{service.name} is given twice; "
                                    "nothing was applied")
            seen.add(service.key)
        stored_now = {s.key: s for s in await self.list(None)}
        view = dict(stored_now)
        planned: builtins.list[ApplyResult] = []
        refused: builtins.list[tuple[Service, ValidationError]] = []
        for service in services:
            try:
                result = self._plan(service, stored_now.get(service.key), view)
            except ValidationError as error:  # every Service is checked; all refusals are raised together
                refused.append((service, error))
                continue
            view[result.service.key] = result.service
            planned.append(result)
        if len(refused) == 1:
            raise refused[0][1]
        if refused:
            # A conflict's message names its Service already (Kubernetes' wording); other refusals get it in front.
            raise ManifestErrors(problem for service, error in refused for problem in problems_of(
                error, "" if isinstance(error, ServiceConflictError) else f"service {'/'.join(service.key)}"))
        for result in planned:
            if result.action is not ApplyAction.UNCHANGED:
                stored = result.service
                await definitions.put(KIND, stored.namespace, stored.name, encode_service(stored))
        return tuple(planned)

    def _plan(self, service: Service, existing: Service | None, view: dict[tuple[str, str], Service]) -> ApplyResult:
        """What applying ``service`` writes (its addresses allocated), checked against the Services in ``view``."""
        others = [s for key, s in view.items() if key != service.key]
        check_ownership(service, others)  # what the manifest names, before anything is allocated
        stored = replace(
            service,
            cluster_ip=self._cluster_ip(service, existing, others),
            ports=self._node_ports(service, existing, others),
        )
        check_ownership(stored, others)  # and the allocated ClusterIP
        action = (ApplyAction.UNCHANGED if existing == stored
                  else ApplyAction.CREATED if existing is None else ApplyAction.CONFIGURED)
        return ApplyResult(stored, action)

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
        if requested not in (None, HEADLESS, previous):
            self.ranges.check_cluster_ip("spec.clusterIP", requested)
        chosen = requested or previous
        # Every address another Service names is taken, not only ClusterIPs: an external IP inside the range
        # must never be handed out as someone's ClusterIP.
        used = {claim.address for s in others for claim in address_claims(s)}
        if chosen is not None:
            if chosen != HEADLESS and chosen in used:
                owner = next(s for s in others if any(c.address == chosen for c in address_claims(s)))
                raise ServiceConflictError(
                    "spec.clusterIP", chosen, f"{chosen} is already allocated to Service "
                    f'"{owner.namespace}/{owner.name}"', f"{service.namespace}/{service.name}",
                    f"{owner.namespace}/{owner.name}",
                )
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
