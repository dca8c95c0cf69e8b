"""The public surface of ``discovery`` is pinned (as httpx pins its exported members): a name added to or dropped
from ``discovery.__all__`` must be a deliberate change of this list, and every exported name must import."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect

import discovery

EXPORTED = [
    "DEFAULT_NAMESPACE",
    "AsyncHealthCheck",
    "AsyncRegistration",
    "AsyncRegistry",
    "AsyncWatch",
    "AuthenticationError",
    "Backend",
    "BackendURL",
    "BackendUnavailableError",
    "Balancer",
    "Capabilities",
    "ClosedError",
    "ConfigurationError",
    "ConnectionState",
    "ConnectionStatus",
    "ConsistentHash",
    "DiscoveryError",
    "DiscoveryTLSError",
    "DownInstancePolicy",
    "DrainResult",
    "FailureTracker",
    "HealthCheck",
    "Instance",
    "LostReason",
    "NoInstanceAvailableError",
    "NotRegisteredError",
    "PermissionDeniedError",
    "PowerOfTwoChoices",
    "RandomChoice",
    "Registration",
    "RegistrationState",
    "Registry",
    "RegistryHealth",
    "RoundRobin",
    "Selector",
    "SelectorError",
    "ServiceCache",
    "Snapshot",
    "Status",
    "UnknownBackendError",
    "UnsupportedOperationError",
    "ValidationError",
    "Watch",
    "WeightedRoundRobin",
    "ZoneAware",
    "drain",
    "drain_async",
    "parse_selector",
    "parse_url",
]


def test_exported_names_are_exactly_the_pinned_list() -> None:
    assert discovery.__all__ == EXPORTED


def test_every_exported_name_imports_and_is_documented() -> None:
    namespace: dict[str, object] = {}
    exec(f"from discovery import {', '.join(EXPORTED)}", namespace)
    for name in EXPORTED:
        value = namespace[name]
        assert value is getattr(discovery, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"discovery.{name} has no docstring"
            # defined in a public module of the package (no private module behind the public name)
            module = value.__module__
            assert module.startswith("discovery.") and not any(part.startswith("_") for part in module.split("."))
            assert getattr(importlib.import_module(module), name) is value


def test_version_is_the_distribution_version() -> None:
    assert discovery.__version__ == importlib.metadata.version("service-discovery")
