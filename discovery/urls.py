"""Connection URLs: ``scheme://host1:port1,host2:port2/path?param=value``.

Multiple hosts are kept in order (they are failover endpoints); parameters are checked by the backend
against the names it knows, and an unknown parameter is an error, never ignored. Secret parameters are
redacted from ``str()`` and ``repr()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qsl, unquote, urlsplit

from discovery.errors import ConfigurationError

DEFAULT_URL = "memory://"
URL_ENVIRONMENT_VARIABLE = "DISCOVERY_URL"
SECRET_PARAMETERS = frozenset({"password", "token", "secret"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ``host[:port]`` of a URL."""

    host: str
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BackendURL:
    """A parsed connection URL."""

    scheme: str
    endpoints: tuple[Endpoint, ...]
    path: str
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        hosts = ",".join(str(e) for e in self.endpoints)
        user = f"{self.username}:***@" if self.username and self.password else (
            f"{self.username}@" if self.username else ""
        )
        query = "&".join(
            f"{k}={'***' if k in SECRET_PARAMETERS else v}" for k, v in sorted(self.params.items())
        )
        return f"{self.scheme}://{user}{hosts}{self.path}" + (f"?{query}" if query else "")

    def __repr__(self) -> str:
        return f"BackendURL({str(self)!r})"

    def check_parameters(self, known: Iterable[str]) -> None:
        """Raise :class:`ConfigurationError` if the URL has a parameter outside ``known``."""
        allowed = set(known)
        unknown = sorted(set(self.params) - allowed)
        if unknown:
            raise ConfigurationError(
                f"{self.scheme}:// does not know the parameter(s) {', '.join(unknown)}"
                f" (known: {', '.join(sorted(allowed)) or 'none'})"
            )

    def get_str(self, name: str, default: str | None = None) -> str | None:
        """A string parameter."""
        return self.params.get(name, default)

    def get_float(self, name: str, default: float, *, minimum: float = 0.0, maximum: float = 86400.0) -> float:
        """A number parameter, checked against ``[minimum, maximum]``."""
        raw = self.params.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(f"{self.scheme}:// parameter {name}={raw!r} is not a number") from None
        if not minimum <= value <= maximum:
            raise ConfigurationError(
                f"{self.scheme}:// parameter {name}={raw} is outside [{minimum:g}, {maximum:g}]"
            )
        return value

    def get_bool(self, name: str, default: bool) -> bool:
        """A boolean parameter (true/false, yes/no, on/off, 1/0)."""
        raw = self.params.get(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigurationError(f"{self.scheme}:// parameter {name}={raw!r} is not a boolean")

    def endpoints_or(self, default_host: str, default_port: int) -> tuple[Endpoint, ...]:
        """The endpoints with missing ports filled in, or the single default endpoint when none are given."""
        if not self.endpoints:
            return (Endpoint(default_host, default_port),)
        return tuple(Endpoint(e.host, e.port if e.port is not None else default_port) for e in self.endpoints)


def _parse_endpoint(text: str, url: str) -> Endpoint:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ConfigurationError(f"malformed host {text!r} in {url!r}")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ConfigurationError(f"empty host in {url!r}")
    if not port_text:
        return Endpoint(host, None)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigurationError(f"bad port {port_text!r} for host {host!r}")
    return Endpoint(host, int(port_text))


def parse_url(url: str | BackendURL | None = None) -> BackendURL:
    """Parse a URL; ``None`` means ``$DISCOVERY_URL``, else ``memory://``.

    Raises :class:`ConfigurationError` for a malformed URL or a repeated parameter.
    """
    if isinstance(url, BackendURL):
        return url
    if url is None:
        url = os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(f"not a discovery URL (expected scheme://...): {url!r}")
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if not scheme.isidentifier():
        raise ConfigurationError(f"bad URL scheme {scheme!r}")
    parts = urlsplit(f"x://{rest}")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    endpoints = tuple(_parse_endpoint(h.strip(), scheme) for h in hosts.split(",") if h.strip())
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key in params:
            raise ConfigurationError(f"parameter {key!r} given twice")
        params[key] = value
    return BackendURL(
        scheme=scheme,
        endpoints=endpoints,
        path=parts.path,
        params=MappingProxyType(params),
        username=username,
        password=password,
    )
