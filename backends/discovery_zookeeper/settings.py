"""The ``zookeeper://`` URL: hosts, root path and session parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

from discovery.core.errors import ConfigurationError, clipped_text
from discovery.core.urls import BackendURL
from discovery_zookeeper.security import SECURITY_PARAMETERS, ZooKeeperSecurity

DEFAULT_PORT = 2181
DEFAULT_ROOT = "/discovery"
DEFAULT_SESSION_TIMEOUT = 10.0
#: ZooKeeper's own default ``tickTime``; expiry is checked once per tick, so a session dies within
#: ``session_timeout + tick`` of its last heartbeat (see docs/decisions/zookeeper-detection-bound.md).
DEFAULT_TICK = 2.0
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Spring Cloud Zookeeper's payload class: written as ``payload["@class"]`` so that Spring can read our records.
SPRING_PAYLOAD_CLASS = "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance"

KNOWN_PARAMETERS = (
    "session_timeout", "connect_timeout", "request_timeout", "tick", "payload_class", "persistent_watches",
    *SECURITY_PARAMETERS,
)


@dataclass(frozen=True, slots=True)
class ZooKeeperConfig:
    """Everything the backend needs from its URL.

    ``zookeeper://h1:2181,h2:2181/root?session_timeout=10&tick=2&connect_timeout=10&request_timeout=10
    &payload_class=...&persistent_watches=true`` (``payload_class=`` empty writes a payload without a Jackson
    ``@class``; ``persistent_watches=false`` follows services with one-shot watches and checks each registration's
    owner with a request even on ZooKeeper 3.6+, as on older servers: docs/decisions/zookeeper-watches.md).
    """

    hosts: str
    root: str = DEFAULT_ROOT
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    tick: float = DEFAULT_TICK
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    request_timeout: float = DEFAULT_SESSION_TIMEOUT
    payload_class: str | None = SPRING_PAYLOAD_CLASS
    persistent_watches: bool = True
    #: TLS, digest auth and ACLs (``tls``, ``ca``, ``cert``, ``key``, ``username``, ``password[_file]``, ``read``).
    security: ZooKeeperSecurity = field(default_factory=ZooKeeperSecurity)

    @classmethod
    def from_url(cls, url: BackendURL) -> ZooKeeperConfig:
        """Read a parsed URL; raise ``ConfigurationError`` for unknown or malformed parameters."""
        url.check_parameters(KNOWN_PARAMETERS)
        security = ZooKeeperSecurity.from_url(url)
        hosts = ",".join(str(endpoint) for endpoint in url.endpoints_or("127.0.0.1", DEFAULT_PORT))
        session_timeout = url.get_float("session_timeout", DEFAULT_SESSION_TIMEOUT, minimum=0.5, maximum=3600.0)
        payload_class = url.get_str("payload_class", SPRING_PAYLOAD_CLASS)
        return cls(
            hosts=hosts,
            root=normalize_root(url.path),
            session_timeout=session_timeout,
            tick=url.get_float("tick", DEFAULT_TICK, minimum=0.001, maximum=60.0),
            connect_timeout=url.get_float("connect_timeout", DEFAULT_CONNECT_TIMEOUT, minimum=0.1, maximum=3600.0),
            request_timeout=url.get_float("request_timeout", session_timeout, minimum=0.1, maximum=3600.0),
            payload_class=payload_class or None,
            persistent_watches=url.get_bool("persistent_watches", True),
            security=security,
        )


def normalize_root(path: str) -> str:
    """``""``/``"/"`` → the default root; otherwise an absolute path without a trailing slash."""
    stripped = path.strip("/")
    if not stripped:
        return DEFAULT_ROOT
    segments = stripped.split("/")
    # "/zookeeper" is the server's own reserved subtree.
    if segments[0] == "zookeeper" or any(segment in ("", ".", "..") for segment in segments):
        shown = clipped_text(path)
        raise ConfigurationError(f"zookeeper:// root path {shown!r} is not a valid znode path for discovery")
    return "/" + "/".join(segments)
