"""Connection URLs: ``scheme://host1:port1,host2:port2/path?param=value``.

Multiple hosts are kept in order (they are failover endpoints); parameters are checked by the backend
against the names it knows, and an unknown parameter is an error, never ignored. Secret parameters are
redacted from ``str()`` and ``repr()`` (:func:`redact_url` for raw text), and error messages never echo a raw URL.
A secret sent without TLS to another machine, and a secret file others may read, are logged as warnings
(logger ``discovery.security``, once per process and subject).

Connection security uses the same parameter names on every backend (see docs/security.md): ``tls``, ``ca``,
``cert``, ``key`` (:meth:`BackendURL.tls`), and secrets read by :meth:`BackendURL.secret` from ``<name>=``,
``<name>_file=`` or an environment variable.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qsl, unquote, urlsplit

from discovery.core.errors import PATH_LIMIT, ConfigurationError, clipped_text

security_log = logging.getLogger("discovery.security")

DEFAULT_URL = "memory://"
URL_ENVIRONMENT_VARIABLE = "DISCOVERY_URL"
SECRET_PARAMETERS = frozenset({"password", "token", "secret"})
#: The TLS parameters every backend understands (see :meth:`BackendURL.tls`).
TLS_PARAMETERS = ("tls", "ca", "cert", "key")
_TRUE = frozenset({"1", "true", "yes", "on"})
#: What :func:`redact_url` shows for text that is not even a URL (it may still hold a secret).
UNREADABLE_URL = "<malformed URL, not shown>"
#: Permission bits that let someone other than the owner read a secret file.
_READABLE_BY_OTHERS = stat.S_IRGRP | stat.S_IROTH
# Each security warning once per process and subject: connect() runs settings parsing again on every reconnect
# attempt of a CLI command or test, and one line says it all.
_warned: set[tuple[str, ...]] = set()
_warned_lock = threading.Lock()

_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """TLS settings from a URL: ``ca`` verifies the server (system CAs when ``None``); ``cert``/``key`` is the
    client certificate (both or neither). Paths only: no file content is ever held here."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


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
    """A parsed connection URL.

    Immutable: safe to share between threads.
    """

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
                f"{self.scheme}:// does not know the parameter(s) {clipped_text(', '.join(unknown))}"
                f" (known: {', '.join(sorted(allowed)) or 'none'})"
            )

    def secret(self, name: str, *, env: str | None = None, inline: str | None = None) -> str | None:
        """A secret from ``<name>=`` (or ``inline``, e.g. the URL's password), ``<name>_file=`` or ``$<env>``.

        The first source given wins, in that order; giving both the value and a file is an error. A file's
        content is stripped of surrounding whitespace (a trailing newline is normal in secret files). Errors
        name the parameter or the file, never the secret.
        """
        value = self.params.get(name, inline)
        path = self.params.get(f"{name}_file")
        if value is not None and path is not None:
            raise ConfigurationError(f"{self.scheme}:// takes {name} or {name}_file, not both")
        if value is None and path is not None:
            value = _read_secret_file(self.scheme, f"{name}_file", path)
        if value is None and env is not None:
            value = os.environ.get(env)
        if value and not self._tls_requested() and not self._loopback_only():
            _warn_once(
                ("plaintext", self.scheme, name, *map(str, self.endpoints)),
                "%s:// sends the %s to %s without TLS: anyone who can see that traffic can read it and act as "
                "you (add tls=true, and ca= if the server's certificate is not signed by a system CA)",
                self.scheme, name, ",".join(map(str, self.endpoints)),
            )
        return value or None

    def _tls_requested(self) -> bool:
        try:
            return self.get_bool("tls", any(self.params.get(n) for n in ("ca", "cert", "key")))
        except ConfigurationError:
            return True  # tls() will refuse the URL; no warning about a connection that will not be made

    def _loopback_only(self) -> bool:
        """Whether every endpoint is this machine (no endpoint: the backend's local default)."""
        return all(_is_loopback(e.host) for e in self.endpoints)

    def tls(self) -> TLSOptions | None:
        """The TLS options, or ``None`` for a plain connection.

        ``tls=true`` turns TLS on; ``ca``, ``cert`` or ``key`` imply it (``tls=false`` with any of them is an
        error). Each file must be readable now, so that a typo fails at connect time with its name rather than
        as a handshake error later.
        """
        files = {name: self.params.get(name) or None for name in ("ca", "cert", "key")}
        wanted = self.get_bool("tls", any(files.values()))
        if not wanted:
            if any(files.values()):
                raise ConfigurationError(f"{self.scheme}:// has tls=false but also ca/cert/key")
            return None
        if (files["cert"] is None) != (files["key"] is None):
            raise ConfigurationError(f"{self.scheme}:// needs both cert= and key= for a client certificate")
        for name, path in files.items():
            if path is not None and not os.access(path, os.R_OK):
                shown = clipped_text(path, PATH_LIMIT)
                raise ConfigurationError(f"{self.scheme}:// parameter {name}: cannot read the file {shown!r}")
        return TLSOptions(ca=files["ca"], cert=files["cert"], key=files["key"])

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
            shown = clipped_text(raw)
            raise ConfigurationError(f"{self.scheme}:// parameter {name}={shown!r} is not a number") from None
        if not minimum <= value <= maximum:
            raise ConfigurationError(
                f"{self.scheme}:// parameter {name}={clipped_text(raw)} is outside [{minimum:g}, {maximum:g}]"
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
        raise ConfigurationError(f"{self.scheme}:// parameter {name}={clipped_text(raw)!r} is not a boolean")

    def endpoints_or(self, default_host: str, default_port: int) -> tuple[Endpoint, ...]:
        """The endpoints with missing ports filled in, or the single default endpoint when none are given."""
        if not self.endpoints:
            return (Endpoint(default_host, default_port),)
        return tuple(Endpoint(e.host, e.port if e.port is not None else default_port) for e in self.endpoints)


def _parse_endpoint(text: str, url: str) -> Endpoint:
    # Messages name the position, not the text: a password with an unescaped '/' or '?' ends up here.
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ConfigurationError(f"malformed [IPv6] host in a {url}:// URL")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ConfigurationError(f"empty host in a {url}:// URL")
    if not port_text:
        return Endpoint(host, None)
    if not port_text.isdigit():
        raise ConfigurationError(
            f"a port in the {url}:// URL is not a number (escape '@', '/', '?' and '#' in a password as %XX)"
        )
    if not port_text.isascii() or len(port_text) > 5 or not 1 <= int(port_text) <= 65535:
        raise ConfigurationError(f"port {clipped_text(port_text)!r} in the {url}:// URL is outside 1-65535")
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
        # The text is not echoed: a mistyped URL may still hold a password or token.
        raise ConfigurationError("not a discovery URL (expected scheme://host:port/path?param=value)")
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if not scheme.isidentifier() or not scheme.isascii():
        shown = f" {scheme!r}" if len(scheme) <= 20 and scheme.isalnum() else ""
        raise ConfigurationError(f"bad URL scheme{shown} (letters, digits and '_' only)")
    try:
        parts = urlsplit(f"x://{rest}")
    except ValueError:  # e.g. an unbalanced '[' in the host list
        raise ConfigurationError(f"malformed {scheme}:// URL (unbalanced [ ] around an IPv6 host?)") from None
    query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    if "@" in parts.path or parts.fragment or any("@" in key for key, _ in query):
        # A password with an unescaped '/', '?' or '#' cuts the authority short: what follows '@' would be read
        # as path, parameters or a dropped fragment, and the start of the password as host:port. Refuse, naming
        # the cause but not the text.
        raise ConfigurationError(
            f"malformed {scheme}:// URL: '@' after the host part, or a '#' - a password with an unescaped '/', "
            f"'?' or '#'? Escape them as %2F, %3F, %23 (and '@' in a path as %40)"
        )
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    endpoints = tuple(_parse_endpoint(h.strip(), scheme) for h in hosts.split(",") if h.strip())
    params: dict[str, str] = {}
    for key, value in query:
        if key in params:
            raise ConfigurationError(f"parameter {clipped_text(key)!r} given twice")
        params[key] = value
    return BackendURL(
        scheme=scheme,
        endpoints=endpoints,
        path=parts.path,
        params=MappingProxyType(params),
        username=username,
        password=password,
    )


def redact_url(url: str | BackendURL | None) -> str:
    """A URL as it may be shown anywhere (terminal, log, error): passwords and tokens replaced by ``***``.

    ``None`` is the default URL as :func:`parse_url` reads it. Text that does not parse is not shown at all:
    a mistyped URL may hold a secret in any position.
    """
    try:
        return str(parse_url(url))
    except ConfigurationError:
        return UNREADABLE_URL


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_once(subject: tuple[str, ...], message: str, *args: object) -> None:
    with _warned_lock:
        if subject in _warned:
            return
        _warned.add(subject)
    security_log.warning(message, *args)


def _read_secret_file(scheme: str, parameter: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            mode = os.fstat(file.fileno()).st_mode
            content = file.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        shown = clipped_text(path, PATH_LIMIT)
        raise ConfigurationError(f"{scheme}:// parameter {parameter}: cannot read {shown!r} ({reason})") from None
    if mode & _READABLE_BY_OTHERS:
        _warn_once(
            ("file-mode", path, oct(mode)),
            "%s:// parameter %s: the secret file %r is readable by %s (mode %s); chmod 600 it",
            scheme, parameter, path,
            "group and others" if mode & _READABLE_BY_OTHERS == _READABLE_BY_OTHERS
            else ("others" if mode & stat.S_IROTH else "its group"),
            oct(stat.S_IMODE(mode)),
        )
    return content
