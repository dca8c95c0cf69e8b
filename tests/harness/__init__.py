"""Real-server test harness: ZooKeeper, etcd and Consul as processes, containers or external servers.

    from tests.harness import start_server
    with start_server("etcd", "process") as etcd:
        print(etcd.url)          # etcd://127.0.0.1:PORT

See docs/decisions/real-servers-harness.md.
"""

from .servers import (
    DEFAULT_ARTIFACTS_DIR,
    PROVIDERS,
    ExternalServerError,
    ServerError,
    ServerHandle,
    free_port,
    free_ports,
    start_server,
)
from .specs import KINDS, SPECS, ServerSpec
from .urls import isolated_url

__all__ = [
    "DEFAULT_ARTIFACTS_DIR",
    "KINDS",
    "PROVIDERS",
    "SPECS",
    "ExternalServerError",
    "ServerError",
    "ServerHandle",
    "ServerSpec",
    "free_port",
    "free_ports",
    "isolated_url",
    "start_server",
]
