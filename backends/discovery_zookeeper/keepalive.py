"""Ephemeral registrations and their self-healing after a session expiry.

Writing is owner-aware: when the znode already exists, its ``ephemeralOwner`` is compared with our live
session. Ours → rewrite the data in place; someone else's (typically the node our *expired* session left behind,
which the server has not yet reaped — Curator #131/#200, kazoo #491, dubbo #5135) → delete that exact version
and create it again, so the node we keep is owned by the session we keep alive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from discovery.core.backend import RegistrationState, StateListener
from discovery.core.errors import BackendUnavailableError
from discovery.core.models import Instance
from discovery_zookeeper.connection import SessionEvent, ZooKeeperSession
from discovery_zookeeper.layout import Layout
from discovery_zookeeper.records import encode_record

logger = logging.getLogger("discovery.backends.zookeeper.keepalive")

Key = tuple[str, str, str]


class _Contended(Exception):
    """The znode changed between our read and our write; try the whole write again."""


@dataclass(slots=True)
class _Registration:
    instance: Instance
    on_state: StateListener
    registered_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    lost: bool = False


class Registrations:
    """What this backend registered, kept alive by the session and rewritten after an expiry."""

    def __init__(self, session: ZooKeeperSession, layout: Layout, payload_class: str | None) -> None:
        self._session = session
        self._layout = layout
        self._payload_class = payload_class
        self._entries: dict[Key, _Registration] = {}
        self._healer: asyncio.Task[None] | None = None
        self._closed = False
        session.add_listener(self._on_session_event)

    def keys(self) -> list[Key]:
        """The keys currently registered."""
        return list(self._entries)

    async def register(self, instance: Instance, on_state: StateListener) -> None:
        """Write the instance's ephemeral znode (replacing any with the same key) and remember it."""
        entry = _Registration(instance, on_state)
        await self._write(entry)
        self._entries[instance.key] = entry

    async def update(self, instance: Instance) -> None:
        """Rewrite the data of a registered instance; after an expiry the healer writes the new value."""
        entry = self._entries.get(instance.key)
        if entry is None:
            raise KeyError(instance.key)
        entry.instance = instance
        if not entry.lost:
            await self._write(entry)

    def adopt(self, instance: Instance) -> None:
        """Someone else rewrote a registered znode: the healer writes ``instance`` back after an expiry, not ours."""
        entry = self._entries.get(instance.key)
        if entry is not None:
            entry.instance = instance

    async def deregister(self, instance: Instance) -> None:
        """Forget the instance and delete its znode if our session owns it; a missing node is fine."""
        self._entries.pop(instance.key, None)
        path = self._layout.instance_path(instance)
        try:
            stat = await self._session.request("exists", self._session.client.exists_async, path)
            if stat is None or stat.ephemeralOwner != self._session.session_id:
                return
            await self._session.request("delete", self._session.client.delete_async, path, stat.version)
        except (NoNodeError, BadVersionError):
            return

    async def deregister_all(self) -> None:
        """Delete every registration (best effort: the CloseSession that follows removes the rest)."""
        self._closed = True
        self._cancel_healer()
        entries = list(self._entries.values())
        results = await asyncio.gather(*(self.deregister(e.instance) for e in entries), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                logger.debug("deregistering on close: %s", result)

    def abandon(self) -> None:
        """Stop healing and forget everything without touching the server (``abort``)."""
        self._closed = True
        self._cancel_healer()
        self._entries.clear()

    # -- writing -------------------------------------------------------------------------------------------------

    async def _write(self, entry: _Registration) -> None:
        try:
            await self._write_once(entry)  # the common case, without building a retry loop per write
            return
        except _Contended:
            pass
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_Contended),
            stop=stop_after_attempt(7),  # eight attempts in all
            wait=wait_random_exponential(multiplier=0.01, max=0.2),
            reraise=True,
        ):
            with attempt:
                await self._write_once(entry)

    async def _write_once(self, entry: _Registration) -> None:
        client = self._session.client
        path = self._layout.instance_path(entry.instance)
        data = encode_record(entry.instance, payload_class=self._payload_class, registered_at_ms=entry.registered_at_ms)
        try:
            await self._session.request("create", client.create_async, path, data, ephemeral=True, makepath=True)
            return
        except NodeExistsError:
            pass
        try:
            _, stat = await self._session.request("get", client.get_async, path)
            if stat.ephemeralOwner == self._session.session_id:
                await self._session.request("set", client.set_async, path, data, stat.version)
                return
            logger.info("replacing %s left by session 0x%x", path, stat.ephemeralOwner)
            await self._session.request("delete", client.delete_async, path, stat.version)
        except (NoNodeError, BadVersionError):
            pass
        raise _Contended(path)

    # -- healing -------------------------------------------------------------------------------------------------

    def _on_session_event(self, event: SessionEvent) -> None:
        if self._closed:
            return
        if event in (SessionEvent.EXPIRED, SessionEvent.NEW_SESSION):
            self._mark_lost()
        if event is SessionEvent.NEW_SESSION and self._healer is None:
            self._healer = asyncio.get_running_loop().create_task(self._heal(), name="zookeeper-heal")

    def _mark_lost(self) -> None:
        for entry in self._entries.values():
            if not entry.lost:
                entry.lost = True
                _notify(entry, RegistrationState.LOST)

    async def _heal(self) -> None:
        """Rewrite every lost registration under the new session, retrying with jittered backoff."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(BackendUnavailableError),
                wait=wait_random_exponential(multiplier=0.05, max=2.0),
                reraise=True,
            ):
                with attempt:
                    await self._session.connected.wait()
                    await self._restore_lost()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("restoring ZooKeeper registrations failed")
        finally:
            self._healer = None
        still_lost = any(entry.lost for entry in self._entries.values())
        if still_lost and not self._closed and self._session.connected.is_set():
            self._healer = asyncio.get_running_loop().create_task(self._heal(), name="zookeeper-heal")

    async def _restore_lost(self) -> None:
        for key, entry in list(self._entries.items()):
            if not entry.lost or self._entries.get(key) is not entry:
                continue
            await self._write(entry)
            if self._entries.get(key) is entry and entry.lost:
                entry.lost = False
                _notify(entry, RegistrationState.RESTORED)

    def _cancel_healer(self) -> None:
        if self._healer is not None:
            self._healer.cancel()
            self._healer = None


def _notify(entry: _Registration, state: RegistrationState) -> None:
    try:
        entry.on_state(state)
    except Exception:
        logger.exception("registration state listener failed for %s", entry.instance.key)
