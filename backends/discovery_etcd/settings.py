"""Reading ``etcd://h1:2379,h2:2379/prefix?ttl=10&timeout=5`` into checked settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from discovery.core.urls import BackendURL, Endpoint
from discovery_etcd.layout import normalize_prefix
from discovery_etcd.security import SECURITY_PARAMETERS, EtcdSecurity

DEFAULT_PORT = 2379
DEFAULT_TTL = 10.0
DEFAULT_TIMEOUT = 5.0
#: etcd's own floor: with the default 100 ms heartbeat and 10-tick election it grants at least 2 s.
MIN_TTL = 2.0
#: etcd revokes expired leases in a loop every 500 ms; the deletion then travels through raft and the watch.
DETECTION_SLACK = 1.0
KNOWN_PARAMETERS = ("ttl", "timeout", *SECURITY_PARAMETERS)


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    """Everything the backend needs from its URL."""

    endpoints: tuple[Endpoint, ...]
    prefix: str
    ttl: float
    timeout: float
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: TLS and credentials (``tls``, ``ca``, ``cert``, ``key``, ``username``, ``password[_file]``).
    security: EtcdSecurity = field(default_factory=EtcdSecurity)

    @classmethod
    def from_url(cls, url: BackendURL) -> EtcdSettings:
        """Check the URL; raise ``ConfigurationError`` for unknown parameters or bad values."""
        url.check_parameters(KNOWN_PARAMETERS)
        security = EtcdSecurity.from_url(url)
        return cls(
            endpoints=url.endpoints_or("127.0.0.1", DEFAULT_PORT),
            prefix=normalize_prefix(url.path),
            ttl=url.get_float("ttl", DEFAULT_TTL, minimum=MIN_TTL, maximum=86400.0),
            timeout=url.get_float("timeout", DEFAULT_TIMEOUT, minimum=0.1, maximum=600.0),
            username=security.username,
            password=security.password,
            security=security,
        )
