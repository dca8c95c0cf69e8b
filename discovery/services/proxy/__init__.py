"""Server-side discovery: an asyncio L4 TCP proxy that serves Services (see :mod:`discovery.services.proxy.server`)."""

from discovery.services.proxy.server import (
    DEFAULT_NODE_ADDRESS,
    ListenerKind,
    ListenerSpec,
    PortStats,
    ServiceProxy,
    desired_listeners,
)

__all__ = ["DEFAULT_NODE_ADDRESS", "ListenerKind", "ListenerSpec", "PortStats", "ServiceProxy", "desired_listeners"]
