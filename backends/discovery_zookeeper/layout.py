"""Where things live: ``<root>/<namespace>/<service>/<instance id>``.

``<root>/<namespace>`` is the Curator x-discovery ``basePath``: Curator keeps one directory per service name
below it and one znode per instance id below that.
"""

from __future__ import annotations

from dataclasses import dataclass

from discovery.core.models import Instance


@dataclass(frozen=True, slots=True)
class Layout:
    """Builds znode paths below a root."""

    root: str

    def namespace_path(self, namespace: str) -> str:
        """The Curator ``basePath`` of a namespace."""
        return f"{self.root}/{namespace}"

    def service_path(self, namespace: str, service: str) -> str:
        """The directory holding one znode per instance of a service."""
        return f"{self.root}/{namespace}/{service}"

    def instance_path(self, instance: Instance) -> str:
        """The ephemeral znode of one instance."""
        return f"{self.service_path(instance.namespace, instance.service)}/{instance.id}"

    def key_of(self, path: str) -> tuple[str, str, str] | None:
        """``(namespace, service, id)`` of an instance znode path below the root, or ``None``."""
        head = f"{self.root}/"
        if not path.startswith(head):
            return None
        parts = path[len(head) :].split("/")
        if len(parts) != 3 or not all(parts):
            return None
        return parts[0], parts[1], parts[2]
