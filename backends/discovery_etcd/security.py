"""Connection security for ``etcd://``: TLS (server verification, client certificates) and user/password auth.

URL parameters (see docs/security.md): ``tls``, ``ca``, ``cert``, ``key``; ``username`` (or ``user@`` in the
URL) with ``password`` / ``password_file`` / ``user:password@`` / ``$DISCOVERY_ETCD_PASSWORD``.

aetcd 1.0 only opens insecure channels, so over TLS :class:`SecureClient` replaces its ``connect`` with the same
steps over ``grpc.aio.secure_channel``; everything else (stubs, metadata with the auth token) is aetcd's own. A
plain channel uses aetcd's ``Client`` unchanged. See docs/decisions/security-etcd-tls-client.md for what would let
the subclass go, and tests/unit/test_private_dependencies.py for the aetcd internals it is pinned to.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aetcd
import grpc  # type: ignore[import-untyped]  # grpcio ships no type hints
from aetcd import rpc, watcher

from discovery.core.errors import PATH_LIMIT, ConfigurationError, DiscoveryTLSError, clipped_text
from discovery.core.urls import BackendURL, TLSOptions

PASSWORD_ENVIRONMENT_VARIABLE = "DISCOVERY_ETCD_PASSWORD"
SECURITY_PARAMETERS = ("tls", "ca", "cert", "key", "username", "password", "password_file")
#: Words gRPC puts in the status details of a failed TLS handshake.
_TLS_MARKERS = ("ssl", "handshake", "certificate", "tls")
#: ...unless the peer just went away mid-handshake (a restarting server): "Handshake read failed (Endpoint closing)".
_TRANSIENT_HANDSHAKE_MARKERS = ("endpoint closing", "socket closed", "connection reset")
#: The HTTP/2 client preface and an empty SETTINGS frame: etcd answers with its own SETTINGS.
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_PREFLIGHT_ANSWER_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class EtcdSecurity:
    """TLS and credentials; the password never appears in ``repr``."""

    tls: TLSOptions | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: BackendURL) -> EtcdSecurity:
        """Read the security parameters (``ConfigurationError`` when they do not fit together)."""
        if url.username and url.params.get("username"):
            raise ConfigurationError("etcd:// takes the user name from user@ or username=, not both")
        username = url.username or url.get_str("username") or None
        password = url.secret("password", env=PASSWORD_ENVIRONMENT_VARIABLE if username else None, inline=url.password)
        if (username is None) != (password is None):
            raise ConfigurationError(
                "etcd:// needs both a user name and a password, or neither"
                f" (password=, password_file=, user:password@ or ${PASSWORD_ENVIRONMENT_VARIABLE})"
            )
        return cls(tls=url.tls(), username=username, password=password)

    def channel_credentials(self) -> Any:
        """``grpc.ChannelCredentials`` for TLS (``None`` for a plain channel); unreadable files are a
        ConfigurationError."""
        if self.tls is None:
            return None

        def read(path: str | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as error:
                raise ConfigurationError(
                    f"etcd:// cannot read the {what} file {clipped_text(path, PATH_LIMIT)!r}: {error.strerror}"
                ) from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.tls.ca, "ca"),
            private_key=read(self.tls.key, "key"),
            certificate_chain=read(self.tls.cert, "cert"),
        )

    def client(self, host: str, port: int, *, timeout: float, options: dict[str, Any]) -> Any:
        """An unconnected client of one endpoint: aetcd's own ``Client`` over a plain channel, :class:`SecureClient`
        over TLS (with our user name and password either way).
        """
        arguments: dict[str, Any] = {
            "host": host, "port": port, "username": self.username, "password": self.password, "timeout": timeout,
            "options": options,
        }
        if self.tls is None:
            return aetcd.Client(**arguments)
        return SecureClient(**arguments, credentials=self.channel_credentials(), tls=self.tls)


def is_authentication_failure(error: BaseException) -> bool:
    """etcd answers a wrong user or password with INVALID_ARGUMENT "authentication failed"."""
    return "authentication failed" in str(error)


def tls_preflight(host: str, port: int, tls: TLSOptions, timeout: float) -> None:
    """One TLS handshake and HTTP/2 hello with Python's ``ssl`` (blocking), for a typed error.

    gRPC retries a handshake the server rejects (a refused client certificate arrives as an alert after
    the TLS 1.3 handshake) and only logs it, so the call would just time out. An unreachable server is left
    to gRPC (``BackendUnavailableError`` later).
    """
    context = ssl.create_default_context(cafile=tls.ca)
    context.set_alpn_protocols(["h2"])
    try:
        if tls.cert and tls.key:
            context.load_cert_chain(tls.cert, tls.key)
    except ssl.SSLError as error:
        raise DiscoveryTLSError(f"etcd TLS: cannot load the client certificate: {error.reason}") from None
    where = f"{host}:{port}"
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as conn,
        ):
            conn.settimeout(_PREFLIGHT_ANSWER_WAIT)
            try:
                conn.sendall(_HTTP2_HELLO)
                answer = None
                with contextlib.suppress(TimeoutError):
                    answer = conn.recv(64)
                if answer == b"":
                    raise ssl.SSLEOFError("closed after the handshake")
            except (ssl.SSLEOFError, ConnectionResetError):
                # The handshake passed our checks, then the server hung up: it refused our certificate
                # (Go sometimes closes without sending the alert).
                raise DiscoveryTLSError(
                    f"etcd at {where} closed the connection after the TLS handshake"
                    " (client certificate refused or missing)"
                ) from None
    except ssl.SSLCertVerificationError as error:
        raise DiscoveryTLSError(f"etcd at {where}: server certificate not trusted ({error.verify_message})") from None
    except ssl.SSLEOFError:
        raise DiscoveryTLSError(f"etcd at {where} closed the TLS connection (is it a TLS port?)") from None
    except ssl.SSLError as error:
        reason = error.reason or str(error)
        hint = " (client certificate refused or missing)" if "CERTIFICATE" in reason.upper() else ""
        raise DiscoveryTLSError(f"etcd at {where}: TLS handshake failed: {reason}{hint}") from None
    except OSError:
        return


def is_tls_error(error: BaseException) -> bool:
    """Whether an aetcd/gRPC error is a failed TLS handshake (not worth retrying: the certificates are wrong)."""
    cause = error.__cause__ if isinstance(error.__cause__, rpc.AioRpcError) else error
    if not isinstance(cause, rpc.AioRpcError):
        return False
    details = (cause.details() or "").lower()
    if any(marker in details for marker in _TRANSIENT_HANDSHAKE_MARKERS):
        return False
    return any(marker in details for marker in _TLS_MARKERS)


def tls_error(error: BaseException, action: str, endpoints: str) -> DiscoveryTLSError:
    """The typed error for a failed handshake, naming what gRPC reported."""
    cause = error.__cause__ if isinstance(error.__cause__, rpc.AioRpcError) else error
    details = cause.details() if isinstance(cause, rpc.AioRpcError) else str(error)
    return DiscoveryTLSError(
        f"could not {action}: TLS with etcd at {endpoints} failed (untrusted server certificate, refused client"
        f" certificate, or not a TLS port): {details}"
    )


class SecureClient(aetcd.Client):  # type: ignore[misc]  # aetcd is untyped
    """An aetcd client whose channel is a TLS channel.

    ``_connect_securely`` mirrors aetcd 1.0's ``Client.connect`` on the attributes aetcd's ``__init__`` sets; a
    change of either in aetcd fails tests/unit/test_private_dependencies.py before it can fail here.
    """

    _is_connecting: bool

    def __init__(self, *args: Any, credentials: Any, tls: TLSOptions, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel_credentials = credentials
        self._tls = tls
        self._checked = False

    async def connect(self) -> None:
        """aetcd's ``connect`` with ``secure_channel`` instead of ``insecure_channel``."""
        try:
            await self._connect_securely()
        except rpc.AioRpcError as error:
            # aetcd's own error mapping, as its connect() applies it (pinned by test_private_dependencies.py).
            aetcd.exceptions._handle_exception(error)  # noqa: SLF001

    async def _connect_securely(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            if not self._checked:
                timeout = min(float(self._timeout or 5.0), 5.0)
                await asyncio.get_running_loop().run_in_executor(
                    None, tls_preflight, self._host, self._port, self._tls, timeout
                )
                self._checked = True
            target = f"{self._host}:{self._port}"
            self.channel = rpc.secure_channel(target, self._channel_credentials, options=self._options.items())
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                response = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                self.metadata = (("token", response.token),)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)
            self._connected.set()
        except BaseException:
            if self.channel is not None:
                await self.channel.close()
            self._init_channel_attrs()
            raise
        finally:
            self._is_connecting = False
