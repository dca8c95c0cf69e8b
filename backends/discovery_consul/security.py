"""Connection security for ``consul://``: HTTPS to the agent (server verification, client certificates) and the
ACL token.

URL parameters (see docs/security.md): ``tls``, ``ca``, ``cert``, ``key``; ``token`` / ``token_file`` /
``$DISCOVERY_CONSUL_TOKEN``. A TLS failure is a :class:`DiscoveryTLSError` naming the likely cause; an ACL
refusal is a :class:`PermissionDeniedError`, an unknown token an :class:`AuthenticationError`.
"""

from __future__ import annotations

import errno
import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import consul.aio
from consul.exceptions import ACLDisabled, ACLPermissionDenied

from discovery.core.errors import AuthenticationError, DiscoveryError, PermissionDeniedError
from discovery.core.urls import BackendURL, TLSOptions

TOKEN_ENVIRONMENT_VARIABLE = "DISCOVERY_CONSUL_TOKEN"
SECURITY_PARAMETERS = ("tls", "ca", "cert", "key", "token", "token_file")


@dataclass(frozen=True, slots=True)
class ConsulSecurity:
    """TLS and the ACL token; the token never appears in ``repr``."""

    #: HTTPS to the agent (``tls``, ``ca``, ``cert``, ``key``); ``None`` is plain HTTP.
    tls: TLSOptions | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: BackendURL) -> ConsulSecurity:
        """Read the security parameters (``ConfigurationError`` for an unreadable token file)."""
        token = url.secret("token", env=TOKEN_ENVIRONMENT_VARIABLE)
        return cls(tls=url.tls(), token=token or None)

    def client_arguments(self) -> dict[str, Any]:
        """The ``consul.aio.Consul`` keyword arguments for the scheme, server verification and client certificate.

        py-consul builds an ``ssl.create_default_context()`` (certificate and host name checked) and adds ``ca``.
        """
        if self.tls is None:
            return {"scheme": "http", "verify": False}
        client_cert = (self.tls.cert, self.tls.key) if self.tls.cert and self.tls.key else None
        return {"scheme": "https", "verify": self.tls.ca or True, "cert": client_cert}

    def apply_token(self, client: consul.aio.Consul) -> None:
        """Send our token on every call: py-consul lets ``$CONSUL_HTTP_TOKEN`` win over its argument, the URL's
        token must win.
        """
        if self.token is not None:
            client.token = self.token


def acl_error(error: ACLPermissionDenied | ACLDisabled, what: str) -> DiscoveryError:
    """The typed error for an ACL refusal of ``what``."""
    if isinstance(error, ACLPermissionDenied):
        if "ACL not found" in str(error):  # Consul's answer to a token it does not know
            return AuthenticationError(f"Consul does not know the ACL token used for {what}")
        return PermissionDeniedError(f"Consul refused {what}: {error}")
    return AuthenticationError(f"Consul rejected the token for {what}: {error}")


def is_tls_failure(error: BaseException) -> bool:
    """Whether an aiohttp/OS error comes from a TLS handshake (anywhere in its cause chain)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError | aiohttp.ClientSSLError):
            return True
        if isinstance(seen, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError) and "SSL" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_hang_up(error: BaseException) -> bool:
    """A connection reset or a server that closed without answering."""
    if isinstance(error, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return True
    return isinstance(error, aiohttp.ClientOSError) and error.errno == errno.ECONNRESET


def tls_reason(error: BaseException) -> str:
    """What most likely made a TLS connection to the agent fail, for the error message."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError | aiohttp.ClientConnectorCertificateError):
            detail = getattr(seen, "verify_message", None) or getattr(seen, "certificate_error", seen)
            return f"server certificate not trusted ({detail})"
        if isinstance(seen, ssl.SSLError):
            reason = seen.reason or str(seen)
            hint = " (client certificate refused or missing)" if "CERTIFICATE" in reason.upper() else ""
            return f"{reason}{hint}"
        seen = seen.__cause__ or seen.__context__
    if is_hang_up(error):
        return f"the agent hung up right after the handshake (client certificate refused or missing): {error}"
    return f"{type(error).__name__}: {error}"
