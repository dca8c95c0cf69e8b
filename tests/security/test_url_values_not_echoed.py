"""A hostile value in a connection URL is refused with a short message, whatever the parameter or position.

Each backend reads its URL when it is created (no connection is made), so every case here runs without a server.
"""

from __future__ import annotations

import pytest

from discovery import ConfigurationError
from discovery.core.plugins import create_backend

LONG = "x" * 5_000
#: A bounded message names the parameter and a clipped value (~80 characters), never the whole of it.
MAX_MESSAGE = 400

HOSTILE_URLS = {
    "memory bool": f"memory://?tls={LONG}",
    "zookeeper float": f"zookeeper://127.0.0.1:2181?session_timeout={LONG}",
    "zookeeper float out of range": f"zookeeper://127.0.0.1:2181?tick={'9' * 5_000}",
    "zookeeper bool": f"zookeeper://127.0.0.1:2181?persistent_watches={LONG}",
    "zookeeper tls bool": f"zookeeper://127.0.0.1:2181?tls={LONG}",
    "zookeeper root": f"zookeeper://127.0.0.1:2181/a/{'.' * 5_000}/../b",
    "zookeeper unknown parameter": f"zookeeper://127.0.0.1:2181?{LONG}=1",
    "zookeeper ca file": f"zookeeper://127.0.0.1:2181?ca=/nonexistent/{LONG}",
    "etcd float": f"etcd://127.0.0.1:2379?ttl={LONG}",
    "etcd ca file": f"etcd://127.0.0.1:2379?ca=/nonexistent/{LONG}",
    "etcd secret file": f"etcd://127.0.0.1:2379?username=u&password_file=/nonexistent/{LONG}",
    "consul scope": f"consul://127.0.0.1:8500/{LONG}",
    "consul float": f"consul://127.0.0.1:8500?wait={LONG}",
    "consul bool": f"consul://127.0.0.1:8500?tls={LONG}",
    "repeated parameter": f"etcd://127.0.0.1:2379?{LONG}=1&{LONG}=2",
    "port": f"etcd://127.0.0.1:{'9' * 5_000}",
}


@pytest.mark.parametrize("url", HOSTILE_URLS.values(), ids=HOSTILE_URLS.keys())
def test_a_long_bad_value_is_refused_without_being_echoed(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        create_backend(url)
    message = str(caught.value)
    assert len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:200]}..."
    assert LONG[:200] not in message
