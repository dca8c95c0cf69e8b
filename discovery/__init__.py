"""discovery: one service-discovery API over ZooKeeper, etcd v3, Consul and an in-memory default.

>>> from discovery import Registry, Instance
>>> with Registry.connect("memory://") as registry:
...     registration = registry.register(Instance("web", "web-1", "127.0.0.1", 8080))
...     [i.id for i in registry.instances("web")]
['web-1']
"""

from discovery.backend import Backend, Capabilities, RegistrationState
from discovery.balancing import (
    Balancer,
    ConsistentHash,
    NoInstanceAvailableError,
    PowerOfTwoChoices,
    RandomChoice,
    RoundRobin,
    WeightedRoundRobin,
    ZoneAware,
)
from discovery.cache import ServiceCache
from discovery.errors import (
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
from discovery.feedback import DownInstancePolicy, FailureTracker
from discovery.label_selector import Selector, parse_selector
from discovery.lifecycle import AsyncHealthCheck, DrainResult, HealthCheck, drain, drain_async
from discovery.models import DEFAULT_NAMESPACE, Instance, Snapshot, Status
from discovery.registration import AsyncRegistration
from discovery.registry import AsyncRegistry, AsyncWatch
from discovery.sync import Registration, Registry, Watch
from discovery.urls import BackendURL, parse_url

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
    "ConsistentHash",
    "DiscoveryError",
    "DiscoveryTLSError",
    "DownInstancePolicy",
    "DrainResult",
    "FailureTracker",
    "HealthCheck",
    "Instance",
    "NoInstanceAvailableError",
    "NotRegisteredError",
    "PermissionDeniedError",
    "PowerOfTwoChoices",
    "RandomChoice",
    "Registration",
    "RegistrationState",
    "Registry",
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
