"""Finding backends by URL scheme through the ``discovery.backends`` entry-point group."""

from __future__ import annotations

from importlib.metadata import entry_points

from discovery.core.backend import Backend
from discovery.core.errors import ConfigurationError, UnknownBackendError
from discovery.core.urls import BackendURL, parse_url

ENTRY_POINT_GROUP = "discovery.backends"

_EXTRA_FOR_SCHEME = {"zookeeper": "zookeeper", "etcd": "etcd", "consul": "consul"}


def available_schemes() -> tuple[str, ...]:
    """Schemes with an installed backend entry point."""
    return tuple(sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} | {"memory"}))


def backend_class(scheme: str) -> type[Backend]:
    """The backend class registered for ``scheme``.

    Raises :class:`UnknownBackendError` when no entry point has that name, and
    :class:`ConfigurationError` when the adapter's dependencies are not installed.
    """
    if scheme == "memory":
        from discovery.memory import MemoryBackend

        return MemoryBackend
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == scheme]
    if not matches:
        raise UnknownBackendError(
            f"no discovery backend for {scheme}:// (installed: {', '.join(available_schemes())})"
        )
    try:
        loaded = matches[0].load()
    except ImportError as missing:
        extra = _EXTRA_FOR_SCHEME.get(scheme, scheme)
        raise ConfigurationError(
            f"the {scheme}:// backend needs extra packages: pip install 'service-discovery[{extra}]' ({missing})"
        ) from missing
    if not (isinstance(loaded, type) and issubclass(loaded, Backend)):
        raise ConfigurationError(f"entry point {scheme} = {matches[0].value} is not a discovery Backend")
    return loaded


def create_backend(url: str | BackendURL | None = None) -> Backend:
    """Build (but do not start) the backend for a URL (``None`` = ``$DISCOVERY_URL`` or ``memory://``)."""
    parsed = parse_url(url)
    return backend_class(parsed.scheme).from_url(parsed)
