"""etcd v3 backend for discovery: ``etcd://host:2379[,host2:2379]/prefix?ttl=10``."""

from discovery_etcd.backend import EtcdBackend

__all__ = ["EtcdBackend"]
