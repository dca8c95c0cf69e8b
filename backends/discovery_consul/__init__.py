"""The Consul backend of discovery: ``consul://host:8500?dc=dc1&token=...``.

Instances live in Consul's native catalog as agent services with TTL checks, so ``consul catalog services``,
the health API and Consul DNS (``<service>.service.consul``, ``<namespace>.<service>.service.consul``) all
see them. Entry point: ``consul = "discovery_consul:ConsulBackend"``.
"""

from discovery_consul.backend import ConsulBackend

__all__ = ["ConsulBackend"]
