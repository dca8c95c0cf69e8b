"""The key layout: ``<prefix>/<namespace>/<service>/<id>``, the etcd naming ``<target>/<id>`` form.

Every range read or watch uses a prefix that ends in ``/`` so that the service ``api`` never matches
keys of ``api-v2`` and the namespace ``a`` never matches ``ab``. Other etcd naming clients may put anything
after ``<target>/`` (``<target>/<host:port>``, even more ``/``-separated segments): :meth:`KeyLayout.parse`
returns all of it as the key segment, and the records module derives a valid id from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from discovery.core.errors import ConfigurationError

DEFAULT_PREFIX = "/discovery"


def normalize_prefix(path: str) -> str:
    """The key prefix for a URL path: ``""`` and ``"/"`` mean :data:`DEFAULT_PREFIX`; no trailing ``/``."""
    stripped = path.strip("/")
    if not stripped:
        return DEFAULT_PREFIX
    if any(not part for part in stripped.split("/")):
        raise ConfigurationError(f"etcd:// key prefix {path!r} has an empty segment")
    return "/" + stripped


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Builds and parses the keys under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def namespace_prefix(self, namespace: str) -> bytes:
        """All keys of a namespace, with the trailing ``/``."""
        return f"{self.prefix}/{namespace}/".encode()

    def target(self, namespace: str, service: str) -> str:
        """The etcd naming *target* of a service (what a gRPC ``etcd:///`` resolver is pointed at)."""
        return f"{self.prefix}/{namespace}/{service}"

    def service_prefix(self, namespace: str, service: str) -> bytes:
        """All keys of one service, with the trailing ``/`` (``<target>/``)."""
        return f"{self.target(namespace, service)}/".encode()

    def instance_key(self, namespace: str, service: str, instance_id: str) -> bytes:
        """The key of one instance: ``<target>/<id>``."""
        return f"{self.target(namespace, service)}/{instance_id}".encode()

    def parse(self, key: bytes) -> tuple[str, str, str] | None:
        """``(namespace, service, key segment)`` of a key under this prefix, or ``None`` when it does not fit.

        The key segment is everything after ``<target>/`` (our instance id, or whatever another writer put
        there, ``/`` included); it is never empty.
        """
        try:
            text = key.decode()
        except UnicodeDecodeError:
            return None
        head = f"{self.prefix}/"
        if not text.startswith(head):
            return None
        parts = text[len(head) :].split("/", 2)
        if len(parts) != 3 or not all(parts):
            return None
        return parts[0], parts[1], parts[2]

