"""etcd v3 backend for discovery: ``etcd://host:2379[,host2:2379]/prefix?ttl=10``.

Each instance is a leased key ``<prefix>/<namespace>/<service>/<id>`` (prefix default ``/discovery``) holding
the JSON of etcd's ``naming/endpoints`` package, so gRPC's ``etcd:///`` resolver finds our instances.

Modules (the same names, for the same jobs, in every adapter):

* :mod:`.backend` - ``EtcdBackend``, the :class:`discovery.core.backend.Backend` contract on aetcd.
* :mod:`.settings` - the ``etcd://`` URL read into checked settings.
* :mod:`.layout` - where instances live: the ``<prefix>/<namespace>/<service>/<id>`` keys.
* :mod:`.records` - the record codec: an instance as etcd naming JSON and back.
* :mod:`.connection` - one aetcd client at a time over the failover endpoints, with bounded retries.
* :mod:`.keepalive` - keeping registrations alive: one lease per TTL, re-granted with every key when lost.
* :mod:`.watch` - following one service: its snapshots, stale while disconnected.
* :mod:`.definitions` - durable definitions as keys without a lease (``backend.definitions``).
* :mod:`.security` - TLS and user/password authentication (aetcd's client over a secure channel).
"""

from discovery_etcd.backend import EtcdBackend

__all__ = ["EtcdBackend"]
