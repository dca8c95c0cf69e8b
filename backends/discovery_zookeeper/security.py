"""Connection security for ``zookeeper://``: TLS to the secure client port, digest auth and znode ACLs.

URL parameters (see docs/security.md): ``tls``, ``ca``, ``cert``, ``key``; ``username`` with ``password`` /
``password_file`` / ``$DISCOVERY_ZOOKEEPER_PASSWORD``; ``read=world|creator``.

With a user name every znode we create (instances, their parent directories, definitions) gets the ACL
*creator all* (``digest:<user>:<hash>`` with every permission) plus *world read* (``read=world``, the default,
so that unauthenticated watchers and Curator/Spring clients can still discover) or nothing else
(``read=creator``). Deleting or rewriting a znode needs DELETE on its parent or WRITE on itself, so another
client cannot remove or redirect our registrations - as long as the root itself carries our ACL, which
:func:`verify_root` checks at start. See docs/decisions/security-zookeeper-acls.md.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from kazoo.exceptions import NoAuthError, NodeExistsError
from kazoo.security import ACL, Permissions, make_acl, make_digest_acl, make_digest_acl_credential

from discovery.core.errors import AuthenticationError, ConfigurationError, DiscoveryTLSError, PermissionDeniedError
from discovery.core.urls import BackendURL, TLSOptions

PASSWORD_ENVIRONMENT_VARIABLE = "DISCOVERY_ZOOKEEPER_PASSWORD"
SECURITY_PARAMETERS = ("tls", "ca", "cert", "key", "username", "password", "password_file", "read")
READ_MODES = ("world", "creator")
_WRITE_PERMISSIONS = Permissions.WRITE | Permissions.CREATE | Permissions.DELETE | Permissions.ADMIN
_HANDSHAKE_ANSWER_WAIT = 2.0

logger = logging.getLogger("discovery.backends.zookeeper.security")


@dataclass(frozen=True, slots=True)
class ZooKeeperSecurity:
    """TLS and digest-auth settings; the password never appears in ``repr``."""

    tls: TLSOptions | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    read: str = "world"

    @classmethod
    def from_url(cls, url: BackendURL) -> ZooKeeperSecurity:
        """Read the security parameters (``ConfigurationError`` for inconsistent ones)."""
        if url.username or url.password:
            raise ConfigurationError("zookeeper:// takes username= and password= parameters, not user:password@")
        username = url.get_str("username") or None
        password = url.secret("password", env=PASSWORD_ENVIRONMENT_VARIABLE if username else None)
        if username is not None and ":" in username:
            raise ConfigurationError("zookeeper:// username must not contain ':' (digest auth uses user:password)")
        if username is None and (url.params.get("password") or url.params.get("password_file")):
            raise ConfigurationError("zookeeper:// has a password but no username")
        if username is not None and password is None:
            raise ConfigurationError(
                "zookeeper:// username needs a password"
                f" (password=, password_file= or ${PASSWORD_ENVIRONMENT_VARIABLE})"
            )
        read = url.get_str("read", "world") or "world"
        if read not in READ_MODES:
            raise ConfigurationError(f"zookeeper:// parameter read must be one of {', '.join(READ_MODES)}")
        if "read" in url.params and username is None:
            raise ConfigurationError("zookeeper:// parameter read needs username/password (ACLs need an identity)")
        return cls(tls=url.tls(), username=username, password=password, read=read)

    @property
    def authenticated(self) -> bool:
        """Whether digest auth (and so ACLs) is configured."""
        return self.username is not None

    def acl(self) -> list[ACL] | None:
        """The ACL of every znode we create, or ``None`` (ZooKeeper's open ACL) without credentials."""
        if self.username is None or self.password is None:
            return None
        acl = [make_digest_acl(self.username, self.password, all=True)]
        if self.read == "world":
            acl.append(make_acl("world", "anyone", read=True))
        return acl

    def identity(self) -> str | None:
        """Our digest ACL id ``user:base64(sha1(user:password))``."""
        if self.username is None or self.password is None:
            return None
        return str(make_digest_acl_credential(self.username, self.password))

    def kazoo_arguments(self) -> dict[str, Any]:
        """Keyword arguments for ``KazooClient``: TLS (certificate and host name always verified) and auth."""
        arguments: dict[str, Any] = {}
        if self.tls is not None:
            arguments.update(
                use_ssl=True,
                ca=self.tls.ca,
                certfile=self.tls.cert,
                keyfile=self.tls.key,
                verify_certs=True,
                check_hostname=True,
            )
        if self.username is not None and self.password is not None:
            arguments.update(auth_data=[("digest", f"{self.username}:{self.password}")], default_acl=self.acl())
        return arguments


class RedactingFilter(logging.Filter):
    """Replaces secrets in log records (kazoo logs every request it sends at DEBUG, the auth packet included)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [secret for secret in secrets if secret]

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message if it holds a secret; never drop the record."""
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self._secrets:
            redacted = redacted.replace(secret, "***")
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True

    def redacts(self, secret: str) -> bool:
        """Whether this filter already hides ``secret``."""
        return secret in self._secrets


def kazoo_logger(security: ZooKeeperSecurity) -> logging.Logger:
    """The logger handed to kazoo: ``discovery.backends.zookeeper.kazoo``, with the password redacted."""
    logger = logging.getLogger("discovery.backends.zookeeper.kazoo")
    if security.password and not any(
        isinstance(f, RedactingFilter) and f.redacts(security.password) for f in logger.filters
    ):
        logger.addFilter(RedactingFilter([security.password]))
    return logger


def _context(tls: TLSOptions) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        if tls.ca:
            context.load_verify_locations(tls.ca)
        if tls.cert and tls.key:
            context.load_cert_chain(tls.cert, tls.key)
    except ssl.SSLError as error:
        raise DiscoveryTLSError(f"ZooKeeper TLS: cannot load the CA or client certificate: {error.reason}") from None
    return context


def tls_preflight(hosts: str, tls: TLSOptions, timeout: float) -> None:
    """Handshake with each server (blocking) so that TLS failures become one :class:`DiscoveryTLSError`.

    kazoo retries a failed handshake forever and only logs it; without this a wrong CA or a refused client
    certificate would look like an unreachable server. The first server that completes the handshake and
    answers the ``isro`` four-letter word ends the check; unreachable servers are left to kazoo.
    """
    context = _context(tls)
    failures: list[str] = []
    for entry in hosts.split(","):
        host, _, port = entry.strip().rpartition(":")
        host = host.strip("[]")
        try:
            with (
                socket.create_connection((host, int(port)), timeout=timeout) as raw,
                context.wrap_socket(raw, server_hostname=host) as conn,
            ):
                conn.settimeout(_HANDSHAKE_ANSWER_WAIT)
                try:
                    conn.sendall(b"isro")
                    answer = None
                    with contextlib.suppress(TimeoutError):
                        answer = conn.recv(64)  # a refused client certificate arrives as an alert here (TLS 1.3)
                    if answer == b"":
                        raise ssl.SSLEOFError("closed after the handshake")
                except (ssl.SSLEOFError, ConnectionResetError):
                    failures.append(
                        f"{entry}: the server closed the connection after the TLS handshake"
                        " (client certificate refused or missing)"
                    )
                    continue
            return
        except ssl.SSLCertVerificationError as error:
            failures.append(f"{entry}: server certificate not trusted ({error.verify_message})")
        except ssl.SSLEOFError:
            failures.append(f"{entry}: the server closed the TLS connection (is it a TLS port?)")
        except ssl.SSLError as error:
            reason = error.reason or str(error)
            hint = " (client certificate refused or missing)" if "CERTIFICATE" in reason.upper() else ""
            failures.append(f"{entry}: TLS handshake failed: {reason}{hint}")
        except OSError:
            continue  # unreachable: kazoo keeps trying, and start() reports BackendUnavailableError
    if failures:
        raise DiscoveryTLSError("ZooKeeper TLS failed for every reachable server: " + "; ".join(failures))


def check_root_acl(root: str, acls: list[ACL], security: ZooKeeperSecurity) -> None:
    """Raise if the root's ACL lets others write, or does not give us every permission.

    Registrations are protected only if nobody else can create, delete or rewrite below the root.
    """
    identity = security.identity()
    ours = [acl for acl in acls if acl.id.scheme == "digest" and acl.id.id == identity]
    if not ours and any(
        acl.id.scheme == "digest" and acl.id.id.split(":", 1)[0] == security.username for acl in acls
    ):
        raise AuthenticationError(
            f"ZooKeeper root {root} belongs to user {security.username!r} with another password: wrong password?"
        )
    problems = []
    if not ours or ours[0].perms != Permissions.ALL:
        problems.append(f"does not give user {security.username!r} all permissions")
    open_to_others = [acl for acl in acls if acl not in ours and acl.perms & _WRITE_PERMISSIONS]
    if open_to_others:
        who = ", ".join(f"{acl.id.scheme}:{acl.id.id.split(':', 1)[0]}" for acl in open_to_others)
        problems.append(f"lets {who} write, so registrations below it could be tampered with")
    if problems:
        raise PermissionDeniedError(f"ZooKeeper root {root} " + "; it ".join(problems))


async def verify_root(session: Any, root: str, security: ZooKeeperSecurity) -> None:
    """Create the root with our ACL if needed, then check its ACL (see :func:`check_root_acl`).

    Without credentials there is no ACL to check: log one warning naming the risk instead.
    """
    if not security.authenticated:
        logger.warning(
            "ZooKeeper root %s: connected without username/password, so every znode we create carries ZooKeeper's "
            "open ACL (world:anyone:cdrwa): anyone who can reach the server can rewrite, delete or add "
            "registrations and Service definitions. Set username= and password_file= (docs/security.md)",
            root,
        )
        return
    client = session.client
    try:
        await session.request("create", client.create_async, root, b"", makepath=True)
    except NodeExistsError:
        pass
    except PermissionDeniedError as error:
        raise PermissionDeniedError(f"ZooKeeper refused to create the root {root}: {error}") from None
    try:
        acls, _ = await session.request("get_acls", client.get_acls_async, root)
    except (NoAuthError, PermissionDeniedError):
        raise PermissionDeniedError(
            f"ZooKeeper root {root} is not readable by user {security.username!r} (wrong password or another owner)"
        ) from None
    check_root_acl(root, list(acls), security)
