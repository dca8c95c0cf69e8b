"""A registrant process for death tests: ``python -m discovery.testing.registrant URL NAMESPACE SERVICE COUNT [TTL]``.

It registers COUNT instances (ids ``<service>-<pid>-<n>``), prints ``READY <ids…>`` and then blocks until
killed, so a test can ``kill -9`` it and watch the instances disappear.
"""

from __future__ import annotations

import os
import sys
import threading

from discovery.core.models import Instance
from discovery.registry.blocking import Registry


def main(argv: list[str]) -> int:
    """Register, announce, block."""
    url, namespace, service, count = argv[0], argv[1], argv[2], int(argv[3])
    ttl = float(argv[4]) if len(argv) > 4 else None
    registry = Registry.connect(url)
    ids = []
    for n in range(count):
        instance = Instance(service, f"{service}-{os.getpid()}-{n}", "127.0.0.1", 10000 + n, namespace=namespace)
        registry.register(instance, ttl=ttl)
        ids.append(instance.id)
    print("READY", *ids, flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
