"""The Consul backend of discovery: ``consul://host:8500?dc=dc1&token=...``.

Instances live in Consul's native catalog as agent services with TTL checks, so ``consul catalog services``,
the health API and Consul DNS (``<service>.service.consul``, ``<namespace>.<service>.service.consul``) all
see them. Entry point: ``consul = "discovery_consul:ConsulBackend"``.

Modules (the same names, for the same jobs, in every adapter):

* :mod:`.backend` - ``ConsulBackend``, the :class:`discovery.core.backend.Backend` contract on ``consul.aio``.
* :mod:`.settings` - the ``consul://`` URL read into checked settings.
* :mod:`.layout` - where instances live: agent service name, tags, ``[<scope>:]<namespace>:<service>:<id>`` ID
  and check IDs.
* :mod:`.records` - the record codec: an instance as service ``Meta`` and back from a health entry.
* :mod:`.connection` - the agent HTTP calls the backend makes, each with a deadline and translated errors.
* :mod:`.keepalive` - keeping registrations alive: the TTL heartbeat, written again when the agent forgets.
* :mod:`.watch` - following one service: its snapshots, stale while disconnected.
* :mod:`.definitions` - durable definitions in Consul KV (``backend.definitions``).
* :mod:`.security` - HTTPS to the agent, the ACL token and the typed TLS/ACL errors.
"""

from discovery_consul.backend import ConsulBackend

__all__ = ["ConsulBackend"]
