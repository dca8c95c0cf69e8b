"""ClusterIP and NodePort allocation from configurable ranges.

Defaults: ClusterIPs from ``127.10.0.0/16`` (loopback, so the proxy can bind them on Linux without any
network set-up) and node ports from Kubernetes' ``30000-32767``. Both are configurable (``ServiceStore``
arguments, CLI ``--cluster-ip-range`` / ``--node-port-range``, ``$DISCOVERY_CLUSTER_IP_RANGE`` /
``$DISCOVERY_NODE_PORT_RANGE``) because on a shared machine part of either may be in use.

A free value is searched from a hash of ``namespace/name`` so that concurrent applies of different Services
rarely try the same value; see docs/decisions/services-allocation.md for what is (not) guaranteed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Collection
from dataclasses import dataclass

from discovery.core.errors import ConfigurationError, ValidationError

DEFAULT_CLUSTER_IP_RANGE = "127.10.0.0/16"
DEFAULT_NODE_PORT_RANGE = "30000-32767"
CLUSTER_IP_RANGE_ENV = "DISCOVERY_CLUSTER_IP_RANGE"
NODE_PORT_RANGE_ENV = "DISCOVERY_NODE_PORT_RANGE"
#: Never handed out: the loopback address everything else uses.
_RESERVED = frozenset({"127.0.0.1"})


def _spread(seed: str, size: int) -> int:
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") % size


def parse_port_range(text: str) -> range:
    """``"30000-32767"`` (inclusive) or a single ``"31000"`` as a ``range``."""
    low, _, high = text.strip().partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise ConfigurationError(f"node port range {text!r} is not 'first-last'") from None
    if not 1 <= first <= last <= 65535:
        raise ConfigurationError(f"node port range {text!r} must be within 1-65535 with first <= last")
    return range(first, last + 1)


def parse_cluster_ip_range(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR network such as ``127.10.0.0/16``."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as bad:
        raise ConfigurationError(f"cluster IP range {text!r} is not a CIDR network: {bad}") from None


@dataclass(frozen=True, slots=True)
class AllocationRanges:
    """Where ClusterIPs and node ports come from.

    Immutable: safe to share between threads.
    """

    cluster_ips: ipaddress.IPv4Network | ipaddress.IPv6Network
    node_ports: range

    @classmethod
    def from_text(cls, cluster_ip_range: str | None = None, node_port_range: str | None = None) -> AllocationRanges:
        """Ranges from text; ``None`` reads the environment variable, then the default."""
        cluster_ips = cluster_ip_range or os.environ.get(CLUSTER_IP_RANGE_ENV) or DEFAULT_CLUSTER_IP_RANGE
        node_ports = node_port_range or os.environ.get(NODE_PORT_RANGE_ENV) or DEFAULT_NODE_PORT_RANGE
        return cls(parse_cluster_ip_range(cluster_ips), parse_port_range(node_ports))

    def describe(self) -> str:
        """For messages: ``127.10.0.0/16, node ports 30000-32767``."""
        return f"cluster IPs {self.cluster_ips}, node ports {self.node_ports.start}-{self.node_ports.stop - 1}"

    def check_node_port(self, where: str, port: int) -> None:
        """A requested node port must lie in the range."""
        if port not in self.node_ports:
            raise ValidationError(
                where, f"{port} is outside the node port range {self.node_ports.start}-{self.node_ports.stop - 1}"
            )

    def check_cluster_ip(self, where: str, address: str) -> None:
        """A requested ClusterIP must be an allocatable address of the range (never 127.0.0.1, the network or
        broadcast address)."""
        network = self.cluster_ips
        parsed = ipaddress.ip_address(address)
        if parsed not in network:
            raise ValidationError(where, f"{address} is outside the cluster IP range {network}")
        if address in _RESERVED or (network.num_addresses > 2 and parsed in (network.network_address,
                                                                              network.broadcast_address)):
            raise ValidationError(where, f"{address} is reserved in the cluster IP range {network}")

    def allocate_cluster_ip(self, seed: str, used: Collection[str]) -> str:
        """A free address of the range (not the network or broadcast address, not 127.0.0.1)."""
        network = self.cluster_ips
        size = network.num_addresses
        start = _spread(seed, size)
        first = int(network.network_address)
        for step in range(size):
            candidate = ipaddress.ip_address(first + (start + step) % size)
            text = str(candidate)
            if size > 2 and candidate in (network.network_address, network.broadcast_address):
                continue
            if text in _RESERVED or text in used:
                continue
            return text
        raise ValidationError("spec.clusterIP", f"no free address left in the cluster IP range {network}")

    def allocate_node_port(self, seed: str, used: Collection[int]) -> int:
        """A free port of the node port range."""
        ports = self.node_ports
        start = _spread(seed, len(ports))
        for step in range(len(ports)):
            candidate = ports[(start + step) % len(ports)]
            if candidate not in used:
                return candidate
        raise ValidationError(
            "spec.ports.nodePort", f"no free node port left in the range {ports.start}-{ports.stop - 1}"
        )
