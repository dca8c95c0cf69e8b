"""TLS for the xDS server and who may read from it: a shared bearer token, or client certificates (mTLS).

The certificate options are the backends' (``ca``/``cert``/``key``, PEM files): the server presents
``cert``/``key``; with ``client_ca`` it requires a client certificate signed by that CA (mTLS).

The token is what gRPC's xDS client sends from the bootstrap's ``call_creds`` of type ``jwt_token_file``
(``authorization: Bearer <file content>``). gRPC reads the expiry from the token, so the token must look like a
JWT: :func:`make_token` makes one with a 256-bit random secret in it and a far expiry. The server compares
the whole token in constant time; it does not verify it as a JWT (it is a shared secret). gRPC sends call
credentials only over TLS, and a token over plain text would leak, so a token requires TLS.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from discovery.core.errors import ConfigurationError

TOKEN_LIFETIME = 10 * 365 * 24 * 3600.0
MAX_TOKEN_LENGTH = 8192


def _read(option: str, path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(f"{option}: cannot read {os.fspath(path)!r} ({error.strerror})") from None


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """The server's certificate and key (PEM), and, for mTLS, the CA that signs accepted client certificates."""

    cert: str
    key: str
    client_ca: str | None = None

    def load(self) -> tuple[bytes, bytes, bytes | None]:
        """The PEM contents ``(cert, key, client_ca)``; ``ConfigurationError`` naming an unreadable file."""
        cert = _read("cert", self.cert)
        key = _read("key", self.key)
        ca = _read("client_ca", self.client_ca) if self.client_ca is not None else None
        for option, body in (("cert", cert), ("key", key), ("client_ca", ca)):
            if body is not None and b"-----BEGIN " not in body:
                raise ConfigurationError(f"{option}: the file is not PEM")
        return cert, key, ca


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_token(lifetime: float = TOKEN_LIFETIME) -> str:
    """A new shared token shaped as a JWT (gRPC's ``jwt_token_file`` credentials read its ``exp``).

    The secret is the random ``jti`` (256 bits) and signature; keep the token as secret as a password.
    """
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"exp": int(time.time() + lifetime), "jti": secrets.token_urlsafe(32), "sub": "discovery-xds-client"}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = _b64(hmac.new(secrets.token_bytes(32), f"{header}.{payload}".encode(), "sha256").digest())
    return f"{header}.{payload}.{signature}"


def read_token(path: str | os.PathLike[str]) -> str:
    """A token from a file (surrounding whitespace stripped); ``ConfigurationError`` if unreadable or empty."""
    text = _read("token_file", path).decode("utf-8", "replace").strip()
    if not text:
        raise ConfigurationError("token_file: the file is empty")
    if len(text) > MAX_TOKEN_LENGTH or any(c.isspace() for c in text):
        raise ConfigurationError("token_file: not a token (too long, or has whitespace inside)")
    return text


class TokenCheck:
    """Accepts a request whose ``authorization`` metadata is ``Bearer <token>`` (compared in constant time)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ConfigurationError("token: must not be empty")
        self._expected = f"Bearer {token}".encode()

    def __repr__(self) -> str:
        return "TokenCheck(<secret>)"

    def accepts(self, authorization: str | bytes | None) -> bool:
        """Whether this ``authorization`` value carries the token."""
        if authorization is None:
            return False
        given = authorization.encode() if isinstance(authorization, str) else authorization
        return hmac.compare_digest(given, self._expected)
