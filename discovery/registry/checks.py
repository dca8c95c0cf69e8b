"""Argument checks for code that needs one kind of registry: the blocking :class:`~discovery.Registry` or the
asyncio :class:`~discovery.AsyncRegistry`.

Handing one where the other is needed used to fail late and misleadingly (a blocking wait on the event loop's
own thread for 15 s, then ``TimeoutError``); these checks refuse it at once with a ``TypeError`` that names the
right type and the call to use instead.
"""

from __future__ import annotations

from discovery.registry.async_registry import AsyncRegistry
from discovery.registry.blocking import Registry

__all__ = ["require_async_registry", "require_registry"]


def require_registry(registry: object, where: str, advice: str) -> Registry:
    """``registry`` if it is a blocking :class:`Registry`, else a ``TypeError``; for an :class:`AsyncRegistry`
    the message ends with ``advice`` (what to use instead).
    """
    if isinstance(registry, Registry):
        return registry
    if isinstance(registry, AsyncRegistry):
        raise TypeError(f"{where} needs a blocking discovery.Registry, got an AsyncRegistry: {advice}")
    raise TypeError(f"{where} needs a discovery.Registry, got {type(registry).__name__}")


def require_async_registry(registry: object, where: str, advice: str) -> AsyncRegistry:
    """``registry`` if it is an :class:`AsyncRegistry`, else a ``TypeError``; for a blocking :class:`Registry`
    the message ends with ``advice`` (what to use instead).
    """
    if isinstance(registry, AsyncRegistry):
        return registry
    if isinstance(registry, Registry):
        raise TypeError(f"{where} needs a discovery.AsyncRegistry, got a blocking Registry: {advice}")
    raise TypeError(f"{where} needs a discovery.AsyncRegistry, got {type(registry).__name__}")
