"""discovery: one service-discovery API over ZooKeeper, etcd v3, Consul and an in-memory default.

>>> from discovery import Registry, Instance
>>> with Registry.connect("memory://") as registry:
...     registration = registry.register(Instance("web", "web-1", "127.0.0.1", 8080))
...     [i.id for i in registry.instances("web")]
['web-1']
"""

from discovery.client.balancers import (
    Balancer,
    ConsistentHash,
    NoInstanceAvailableError,
    PowerOfTwoChoices,
    RandomChoice,
    RoundRobin,
    WeightedRoundRobin,
    ZoneAware,
)
from discovery.client.cache import ServiceCache
from discovery.client.feedback import DownInstancePolicy, FailureTracker
from discovery.client.lifecycle import AsyncHealthCheck, DrainResult, HealthCheck, drain, drain_async
from discovery.core.backend import Backend, Capabilities, LostReason, RegistrationState
from discovery.core.connection import ConnectionState, ConnectionStatus
from discovery.core.errors import (
    AuthenticationError,
    BackendUnavailableError,
    ClosedError,
    ConfigurationError,
    DiscoveryError,
    DiscoveryTLSError,
    NotRegisteredError,
    PermissionDeniedError,
    SelectorError,
    UnknownBackendError,
    UnsupportedOperationError,
    ValidationError,
)
from discovery.core.models import DEFAULT_NAMESPACE, Instance, Snapshot, Status
from discovery.core.selectors import Selector, parse_selector
from discovery.core.urls import BackendURL, parse_url
from discovery.registry.async_registry import AsyncRegistry, AsyncWatch
from discovery.registry.blocking import Registration, Registry, Watch
from discovery.registry.health import RegistryHealth
from discovery.registry.registration import AsyncRegistration

__all__ = [
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
__version__ = "0.1.0"
