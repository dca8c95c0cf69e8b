"""An authoritative DNS responder for ``cluster.local`` over UDP and TCP (needs dnspython: the ``[cli]`` extra).

See :mod:`discovery.services.dns.answers` for the names it answers.
"""

try:
    import dns.message  # noqa: F401  # fail here, with a clear message, rather than deep inside
except ImportError as missing:  # pragma: no cover - depends on the installation
    from discovery.services.manifest import MissingExtraError

    raise MissingExtraError("discovery.services.dns needs dnspython: pip install 'service-discovery[cli]'") from missing

from discovery.services.dns.answers import DEFAULT_TTL, ZoneAnswers
from discovery.services.dns.server import DEFAULT_DNS_PORT, DnsServer, DnsStats

__all__ = ["DEFAULT_DNS_PORT", "DEFAULT_TTL", "DnsServer", "DnsStats", "ZoneAnswers"]
