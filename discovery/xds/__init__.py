"""Proxyless gRPC: an xDS control plane (ADS, state of the world, Envoy v3) serving a registry's instances.

* :class:`XdsServer` - the server (asyncio, grpc.aio) on one :class:`~discovery.AsyncRegistry`.
* :func:`parse_target` - what ``xds:///orders``, ``xds:///orders.payments`` and
  ``xds:///<svc>.<ns>.svc.cluster.local:<port>`` mean.
* :func:`grpc_bootstrap` - the bootstrap a gRPC client needs (``GRPC_XDS_BOOTSTRAP``).
* :class:`ServerTLS`, :func:`make_token` - TLS, mTLS and the shared token.

Needs the ``[xds]`` extra (grpcio and the Envoy v3 messages from xds-protos).
"""

from discovery.xds.bootstrap import grpc_bootstrap
from discovery.xds.names import RegistryTarget, ServiceTarget, Target, parse_target
from discovery.xds.resources import LbPolicy
from discovery.xds.security import ServerTLS, make_token, read_token
from discovery.xds.server import XdsServer
from discovery.xds.stream import StreamInfo

__all__ = [
    "LbPolicy",
    "RegistryTarget",
    "ServerTLS",
    "ServiceTarget",
    "StreamInfo",
    "Target",
    "XdsServer",
    "grpc_bootstrap",
    "make_token",
    "parse_target",
    "read_token",
]
