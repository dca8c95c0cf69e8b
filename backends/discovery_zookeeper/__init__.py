"""ZooKeeper backend for discovery (``zookeeper://h1:2181,h2:2181/root?session_timeout=10``).

Each instance is an ephemeral znode ``<root>/<namespace>/<service>/<id>`` (root default ``/discovery``)
whose data is Apache Curator x-discovery ``ServiceInstance`` JSON, so Curator and Spring Cloud Zookeeper
(basePath ``<root>/<namespace>``) see our instances and we see theirs.

URL parameters: ``session_timeout`` (seconds, default 10; the liveness TTL of every registration),
``tick`` (the server's tickTime in seconds that the detection bound assumes, default 2),
``connect_timeout`` (default 10), ``request_timeout`` (default = session timeout) and ``payload_class``
(the Jackson ``@class`` written in the payload; default Spring Cloud Zookeeper's ``ZookeeperInstance``,
empty for none).

Modules (the same names, for the same jobs, in every adapter):

* :mod:`.backend` - ``ZooKeeperBackend``, the :class:`discovery.core.backend.Backend` contract on kazoo.
* :mod:`.settings` - the ``zookeeper://`` URL read into checked settings.
* :mod:`.layout` - where instances live: ``<root>/<namespace>/<service>/<id>`` znode paths.
* :mod:`.records` - the record codec: an instance as Curator ``ServiceInstance`` JSON and back.
* :mod:`.connection` - the kazoo client and its session, seen from the event loop.
* :mod:`.keepalive` - keeping registrations alive: ephemeral znodes written again after a session loss.
* :mod:`.watch` - following one service: its snapshots, stale while disconnected.
* :mod:`.definitions` - durable definitions as persistent znodes (``backend.definitions``).
* :mod:`.security` - TLS, digest authentication and znode ACLs.
* :mod:`.bridge` - ZooKeeper only: kazoo's threads and async results brought onto the event loop.
"""

from discovery_zookeeper.backend import ZooKeeperBackend

__all__ = ["ZooKeeperBackend"]
