"""Server-side discovery: an asyncio L4 TCP proxy that serves Services (see :mod:`discovery.proxy.server`)."""

from discovery.proxy.server import (
    DEFAULT_NODE_ADDRESS,
    ListenerKind,
    ListenerSpec,
    PortStats,
    ServiceProxy,
    desired_listeners,
)

__all__ = ["DEFAULT_NODE_ADDRESS", "ListenerKind", "ListenerSpec", "PortStats", "ServiceProxy", "desired_listeners"]
