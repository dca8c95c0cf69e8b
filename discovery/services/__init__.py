"""Kubernetes-style Services over any backend: definitions stored durably, endpoints from the registry.

* :class:`Service` / :class:`ServicePort` / :class:`ServiceType` - the model (validated, manifest field names in
  errors); :func:`parse_manifests` reads ``apiVersion: v1, kind: Service`` YAML.
* :class:`ServiceStore` - apply/get/list/delete/watch definitions in a backend; allocates ClusterIPs and node ports
  from :class:`AllocationRanges`; refuses addresses another Service owns (:class:`ServiceConflictError`).
* :func:`resolve_endpoints` / :class:`Endpoints` - UP instances matching the selector, target ports resolved.
* :class:`ServiceCatalog` - every Service and its endpoints, followed live (what the proxy and DNS serve).
"""

from discovery.core.errors import UnsupportedOperationError
from discovery.services.allocation import AllocationRanges
from discovery.services.catalog import ServiceCatalog, read_endpoints
from discovery.services.endpoints import Endpoint, Endpoints, PortEndpoints, resolve_endpoints, target_port
from discovery.services.manifest import (
    LoadedService,
    ManifestError,
    ManifestErrors,
    ManifestProblem,
    MissingExtraError,
    UnsupportedFieldError,
    decode_service,
    encode_service,
    parse_manifest_texts,
    parse_manifests,
    service_from_manifest,
    service_to_manifest,
)
from discovery.services.model import CLUSTER_DOMAIN, HEADLESS, Service, ServicePort, ServiceType
from discovery.services.store import ApplyAction, ApplyResult, ServiceConflictError, ServiceSet, ServiceStore

__all__ = [
    "CLUSTER_DOMAIN",
    "HEADLESS",
    "AllocationRanges",
    "ApplyAction",
    "ApplyResult",
    "Endpoint",
    "Endpoints",
    "LoadedService",
    "ManifestError",
    "ManifestErrors",
    "ManifestProblem",
    "MissingExtraError",
    "PortEndpoints",
    "Service",
    "ServiceCatalog",
    "ServiceConflictError",
    "ServicePort",
    "ServiceSet",
    "ServiceStore",
    "ServiceType",
    "UnsupportedFieldError",
    "UnsupportedOperationError",
    "decode_service",
    "encode_service",
    "parse_manifest_texts",
    "parse_manifests",
    "read_endpoints",
    "resolve_endpoints",
    "service_from_manifest",
    "service_to_manifest",
    "target_port",
]
