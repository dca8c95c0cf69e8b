"""Every public class says in its docstring whether it is thread-safe (issue 18, item 3).

Public: every class exported (``__all__``) by the package and its client, observability, health, connection and
services modules, and the four backends. Exceptions and enums are immutable values and are left out.
"""

from __future__ import annotations

import enum
import importlib
import inspect

import pytest

MODULES = (
    "discovery",
    "discovery.client.asgi",
    "discovery.client.balancers",
    "discovery.client.cache",
    "discovery.client.feedback",
    "discovery.client.httpx_transport",
    "discovery.client.lifecycle",
    "discovery.core.connection",
    "discovery.observability.metrics",
    "discovery.observability.opentelemetry",
    "discovery.observability.prometheus",
    "discovery.registry.health",
    "discovery.services",
    "discovery.services.dns",
    "discovery.services.proxy",
)
BACKENDS = (
    ("discovery.memory", "MemoryBackend"),
    ("discovery_zookeeper", "ZooKeeperBackend"),
    ("discovery_etcd", "EtcdBackend"),
    ("discovery_consul", "ConsulBackend"),
)


def _public_classes() -> dict[str, type]:
    found: dict[str, type] = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if inspect.isclass(value) and not issubclass(value, BaseException | enum.Enum):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    for module_name, name in BACKENDS:
        value = getattr(importlib.import_module(module_name), name)
        found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


PUBLIC = _public_classes()


def test_the_public_surface_is_found() -> None:
    assert {"discovery.registry.blocking.Registry", "discovery.client.cache.ServiceCache",
            "discovery_etcd.backend.EtcdBackend"} <= set(PUBLIC)
    assert len(PUBLIC) > 40


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_the_docstring_states_thread_safety(name: str) -> None:
    doc = PUBLIC[name].__doc__ or ""
    assert any(word in doc for word in ("Thread-safe", "thread-safe", "Immutable: safe to share between threads")), (
        f"{name} does not say whether it is thread-safe"
    )
