"""The typed errors of the discovery API: every failure a user can act on is a ``DiscoveryError``."""

from __future__ import annotations

import reprlib

_clipped_repr = reprlib.Repr()
_clipped_repr.maxstring = 60
_clipped_repr.maxother = 60
_clipped_repr.maxlevel = 2
_clipped_repr.maxdict = _clipped_repr.maxlist = _clipped_repr.maxtuple = _clipped_repr.maxset = 4


def clipped(value: object) -> str:
    """A short ``repr`` for error messages: at most about 80 characters, never the whole of a large value."""
    try:
        return _clipped_repr.repr(value)
    except (ValueError, RecursionError):  # e.g. an int too long to print
        return f"<{type(value).__name__}>"


#: How much of a file path a message shows (paths are the operator's own, but a mistyped one can be any length).
PATH_LIMIT = 300


def clipped_text(text: str, limit: int = 80) -> str:
    """``text`` as a message may show it: whole up to ``limit`` characters, else its start and end around '...'."""
    if len(text) <= limit:
        return text
    keep = (limit - 3) // 2
    return f"{text[:keep]}...{text[-keep:]}"


class DiscoveryError(Exception):
    """Base class of every error raised by the discovery library."""


class ValidationError(DiscoveryError, ValueError):
    """An instance, name, selector or argument is malformed; nothing was written.

    ``field`` names the offending field (e.g. ``"labels"`` or ``"port"``).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class SelectorError(ValidationError):
    """A label selector string cannot be parsed."""

    def __init__(self, message: str) -> None:
        super().__init__("selector", message)


class ConfigurationError(DiscoveryError, ValueError):
    """A connection URL or backend option is invalid (unknown scheme, unknown parameter, bad value)."""


class UnknownBackendError(ConfigurationError):
    """No backend is installed for the URL scheme (entry-point group ``discovery.backends``)."""


class BackendUnavailableError(DiscoveryError, ConnectionError):
    """The backend server could not be reached (or did not answer in time)."""


class AuthenticationError(DiscoveryError):
    """The backend rejected the credentials."""


class PermissionDeniedError(DiscoveryError):
    """The backend refused the operation for lack of permission."""


class DiscoveryTLSError(DiscoveryError):
    """A TLS handshake or certificate check failed."""


class NotRegisteredError(DiscoveryError):
    """The operation needs a live registration, and this one is deregistered (or its registry closed)."""


class ClosedError(DiscoveryError):
    """The registry has been closed."""


class UnsupportedOperationError(DiscoveryError, NotImplementedError):
    """The backend does not offer an optional capability (e.g. durable definitions)."""
