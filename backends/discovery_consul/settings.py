"""``consul://host:8500[/scope]?dc=dc1&token=...&ttl=10&timeout=5&wait=60&deregister_after=60``: the options.

The optional path is a *scope*: registries with different scopes on one Consul never see each other's
instances (like a ZooKeeper root or an etcd prefix); see docs/decisions/consul-scope.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from discovery.core.errors import ConfigurationError, clipped_text
from discovery.core.urls import BackendURL
from discovery_consul.security import SECURITY_PARAMETERS, ConsulSecurity

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8500
DEFAULT_TTL = 10.0
MIN_TTL = 1.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_WAIT = 60.0
# Consul will not reap a critical service sooner than one minute.
MIN_DEREGISTER_AFTER = 60.0

# The scope becomes part of agent service ids (":"-separated, used in URL paths) and a Meta value.
_SCOPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")

KNOWN_PARAMETERS = ("dc", "ttl", "timeout", "wait", "deregister_after", *SECURITY_PARAMETERS)


@dataclass(frozen=True, slots=True)
class ConsulSettings:
    """Parsed connection options. The token never appears in ``repr`` (nor anywhere in logs)."""

    url: BackendURL
    host: str
    port: int
    scope: str | None
    dc: str | None
    default_ttl: float
    timeout: float
    wait: float
    deregister_after: float
    #: HTTPS and the ACL token (``tls``, ``ca``, ``cert``, ``key``, ``token[_file]``).
    security: ConsulSecurity = field(default_factory=ConsulSecurity)

    @classmethod
    def from_url(cls, url: BackendURL) -> ConsulSettings:
        """Check and read a ``consul://`` URL (``ConfigurationError`` on anything unknown or malformed)."""
        url.check_parameters(KNOWN_PARAMETERS)
        if len(url.endpoints) > 1:
            raise ConfigurationError(
                "consul:// takes one agent address: registrations belong to the agent they were made on"
            )
        if url.username or url.password:
            raise ConfigurationError("consul:// takes no user:password; pass an ACL token as ?token=...")
        scope = url.path.strip("/") or None
        if scope is not None and not _SCOPE.fullmatch(scope):
            shown = clipped_text(url.path)
            raise ConfigurationError(
                f"consul:// scope (the URL path) must be 1-63 letters, digits, '_' or '-' (got {shown!r})"
            )
        (endpoint,) = url.endpoints_or(DEFAULT_HOST, DEFAULT_PORT)
        assert endpoint.port is not None
        dc = url.get_str("dc")
        if dc == "":
            raise ConfigurationError("consul:// parameter dc must not be empty")
        return cls(
            url=url,
            host=endpoint.host,
            port=endpoint.port,
            scope=scope,
            dc=dc,
            default_ttl=url.get_float("ttl", DEFAULT_TTL, minimum=MIN_TTL),
            timeout=url.get_float("timeout", DEFAULT_TIMEOUT, minimum=0.1, maximum=300.0),
            wait=url.get_float("wait", DEFAULT_WAIT, minimum=1.0, maximum=600.0),
            deregister_after=url.get_float("deregister_after", MIN_DEREGISTER_AFTER, minimum=MIN_DEREGISTER_AFTER),
            security=ConsulSecurity.from_url(url),
        )
