"""Helpers for the etcd backend tests: a raw aetcd client, a gate on reconnects (waiting: discovery.testing)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aetcd

from discovery.core.plugins import create_backend
from discovery_etcd import EtcdBackend
from discovery_etcd.watch import ServiceWatch


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"/etcd-test-{uuid.uuid4().hex}"


async def started_backend(url: str) -> EtcdBackend:
    """A started etcd backend for ``url``."""
    backend = create_backend(url)
    assert isinstance(backend, EtcdBackend)
    await backend.start()
    return backend


def raw_client(host: str, port: int) -> Any:
    """A plain aetcd client, to act on etcd from outside the backend."""
    return aetcd.Client(host=host, port=port, timeout=5)


class ReconnectGate:
    """Holds a watch stream's reconnects until :meth:`open` (through its ``before_reconnect`` test seam), so a test
    can change etcd while the watch is away.
    """

    def __init__(self, watch: ServiceWatch) -> None:
        self.opened = asyncio.Event()
        self.waiting = asyncio.Event()

        async def gate() -> None:
            self.waiting.set()
            await self.opened.wait()

        watch.before_reconnect = gate

    def open(self) -> None:
        """Let the watch reconnect."""
        self.opened.set()
