"""``consul://host:8500?dc=dc1&token=...&ttl=10&timeout=5&wait=60&deregister_after=60``: the backend's options."""

from __future__ import annotations

from dataclasses import dataclass, field

from discovery.errors import ConfigurationError
from discovery.urls import BackendURL

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8500
DEFAULT_TTL = 10.0
MIN_TTL = 1.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_WAIT = 60.0
# Consul will not reap a critical service sooner than one minute.
MIN_DEREGISTER_AFTER = 60.0

PARAMETERS = frozenset({"dc", "token", "ttl", "timeout", "wait", "deregister_after"})


@dataclass(frozen=True, slots=True)
class ConsulSettings:
    """Parsed connection options. The token never appears in ``repr`` (nor anywhere in logs)."""

    url: BackendURL
    host: str
    port: int
    dc: str | None
    token: str | None = field(repr=False)
    default_ttl: float
    timeout: float
    wait: float
    deregister_after: float

    @classmethod
    def from_url(cls, url: BackendURL) -> ConsulSettings:
        """Check and read a ``consul://`` URL (``ConfigurationError`` on anything unknown or malformed)."""
        url.check_parameters(PARAMETERS)
        if len(url.endpoints) > 1:
            raise ConfigurationError(
                "consul:// takes one agent address: registrations belong to the agent they were made on"
            )
        if url.username or url.password:
            raise ConfigurationError("consul:// takes no user:password; pass an ACL token as ?token=...")
        if url.path not in ("", "/"):
            raise ConfigurationError(f"consul:// takes no path (got {url.path!r})")
        (endpoint,) = url.endpoints_or(DEFAULT_HOST, DEFAULT_PORT)
        assert endpoint.port is not None
        token = url.get_str("token")
        dc = url.get_str("dc")
        if dc == "":
            raise ConfigurationError("consul:// parameter dc must not be empty")
        return cls(
            url=url,
            host=endpoint.host,
            port=endpoint.port,
            dc=dc,
            token=token or None,
            default_ttl=url.get_float("ttl", DEFAULT_TTL, minimum=MIN_TTL),
            timeout=url.get_float("timeout", DEFAULT_TIMEOUT, minimum=0.1, maximum=300.0),
            wait=url.get_float("wait", DEFAULT_WAIT, minimum=1.0, maximum=600.0),
            deregister_after=url.get_float("deregister_after", MIN_DEREGISTER_AFTER, minimum=MIN_DEREGISTER_AFTER),
        )
