"""ZooKeeper backend for discovery (``zookeeper://h1:2181,h2:2181/root?session_timeout=10``).

Each instance is an ephemeral znode ``<root>/<namespace>/<service>/<id>`` (root default ``/discovery``)
whose data is Apache Curator x-discovery ``ServiceInstance`` JSON, so Curator and Spring Cloud Zookeeper
(basePath ``<root>/<namespace>``) see our instances and we see theirs.

URL parameters: ``session_timeout`` (seconds, default 10; the liveness TTL of every registration),
``tick`` (the server's tickTime in seconds that the detection bound assumes, default 2),
``connect_timeout`` (default 10), ``request_timeout`` (default = session timeout) and ``payload_class``
(the Jackson ``@class`` written in the payload; default Spring Cloud Zookeeper's ``ZookeeperInstance``,
empty for none).
"""

from discovery_zookeeper.backend import ZooKeeperBackend

__all__ = ["ZooKeeperBackend"]
