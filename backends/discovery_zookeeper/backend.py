"""``ZooKeeperBackend``: the :class:`discovery.core.backend.Backend` over kazoo."""

from __future__ import annotations

import asyncio
import logging
import weakref

from kazoo.exceptions import BadVersionError, NoNodeError

from discovery.core import validation
from discovery.core.backend import Backend, Capabilities, StateListener
from discovery.core.errors import (
    BackendUnavailableError,
    ClosedError,
    DiscoveryError,
    NotRegisteredError,
    ValidationError,
)
from discovery.core.foreign import foreign_key_of
from discovery.core.models import Instance, Status
from discovery.core.urls import BackendURL
from discovery_zookeeper.connection import SessionEvent, ZooKeeperSession
from discovery_zookeeper.definitions import ZooKeeperDefinitions
from discovery_zookeeper.keepalive import Registrations
from discovery_zookeeper.layout import Layout
from discovery_zookeeper.records import with_status
from discovery_zookeeper.security import verify_root
from discovery_zookeeper.settings import ZooKeeperConfig
from discovery_zookeeper.watch import OwnCreates, ServiceWatch, decode_or_none

logger = logging.getLogger("discovery.backends.zookeeper.backend")

#: Read-compare-rewrite rounds of ``set_status`` before giving up on a znode that keeps changing.
_REWRITE_ATTEMPTS = 5


class ZooKeeperBackend(Backend):
    """Instances as ephemeral znodes ``<root>/<namespace>/<service>/<id>`` holding Curator ServiceInstance JSON.

    Liveness is the ZooKeeper session: one per backend, with the URL's ``session_timeout`` (per-registration
    TTLs do not apply). See the module docs of :mod:`discovery_zookeeper` for the URL.

    Not thread-safe, like every backend: only its registry's event loop calls it (kazoo's threads hand over to it).
    """

    scheme = "zookeeper"

    def __init__(self, config: ZooKeeperConfig) -> None:
        self.config = config
        self._layout = Layout(config.root)
        self._session: ZooKeeperSession | None = None
        self._registrations: Registrations | None = None
        # Open watch streams, to end them on close; a stream its consumer dropped leaves by itself.
        self._watches: weakref.WeakSet[ServiceWatch] = weakref.WeakSet()
        # What our registrations create, for the watches of their services (not read back: one get fewer each).
        self._own_creates = OwnCreates()
        self._capabilities: Capabilities | None = None
        self._closed = False
        self._definitions = ZooKeeperDefinitions(self._live_session, config.root)

    @classmethod
    def from_url(cls, url: BackendURL) -> ZooKeeperBackend:
        """Build from ``zookeeper://h1:2181,h2:2181/root?session_timeout=10``."""
        return cls(ZooKeeperConfig.from_url(url))

    @property
    def capabilities(self) -> Capabilities:
        """TTL = the (server-granted) session timeout; detection slack = one server tick."""
        session_timeout = self.config.session_timeout
        if self._session is not None and self._session.client.connected:
            session_timeout = max(session_timeout, self._session.negotiated_timeout)
        if self._capabilities is None or self._capabilities.default_ttl != session_timeout:
            # Built again only when the granted timeout changes: every registration reads it (twice).
            self._capabilities = Capabilities(
                name="zookeeper",
                default_ttl=session_timeout,
                min_ttl=session_timeout,
                detection_slack=self.config.tick,
                ttl_per_registration=False,
            )
        return self._capabilities

    @property
    def definitions(self) -> ZooKeeperDefinitions:
        """Definitions are persistent znodes under ``<root>/_definitions`` (see :mod:`.definitions`)."""
        return self._definitions

    @property
    def session_id(self) -> int | None:
        """The live ZooKeeper session id (``None`` while disconnected): the ``ephemeralOwner`` of our znodes."""
        return None if self._session is None else self._session.session_id

    @property
    def persistent_watches(self) -> bool | None:
        """Whether streams follow services with a persistent recursive watch each (ZooKeeper 3.6+) rather than
        one-shot watches; ``None`` until the first stream has asked the server."""
        return None if self._session is None else self._session.persistent_watches

    def session_for_tests(self) -> ZooKeeperSession | None:
        """Test seam: the live session, to send requests the backend does not (``None`` before start)."""
        return self._session

    def session_credentials_for_tests(self) -> tuple[int, bytes] | None:
        """Test seam: the live session's id and password (kazoo's ``client_id``), or ``None`` while disconnected.

        With them a second client can join this session and close it, which expires it on purpose (the session
        and fault tests). Nothing else needs the password: it stays out of every other attribute.
        """
        client_id = None if self._session is None else self._session.client.client_id
        return None if client_id is None else (int(client_id[0]), bytes(client_id[1]))

    async def start(self) -> None:
        """Connect and open the session."""
        if self._closed:
            raise ClosedError("this ZooKeeper backend was closed")
        session = ZooKeeperSession(self.config)
        await session.start()
        try:
            await verify_root(session, self.config.root, self.config.security)
        except BaseException:
            await session.stop()
            raise
        granted = session.negotiated_timeout
        if abs(granted - self.config.session_timeout) > 1e-3:
            logger.warning(
                "ZooKeeper granted a %gs session timeout instead of the requested %gs (server tick limits)",
                granted, self.config.session_timeout,
            )
        self._session = session
        self._registrations = Registrations(
            session, self._layout, self.config.payload_class, self.config.request_timeout, self._own_creates
        )
        session.add_listener(self._report_session_event)

    def _report_session_event(self, event: SessionEvent) -> None:
        """kazoo's connection states, as the backend-neutral connection states."""
        monitor = self.connection
        if event is SessionEvent.SUSPENDED:
            monitor.failure(f"the connection to {self.config.hosts} dropped (session kept for now)")
        elif event is SessionEvent.EXPIRED:
            monitor.lost("the ZooKeeper session expired")
        elif event is SessionEvent.RECONNECTED:
            monitor.contact("same session")
        else:
            monitor.lost("the ZooKeeper session expired while disconnected")
            monitor.contact("new session")

    async def close(self) -> None:
        """Deregister everything, end the watch streams, close the session."""
        if self._closed:
            return
        self._closed = True
        self._stop_watches()
        if self._session is None or self._registrations is None:
            return
        await self._registrations.deregister_all()
        await self._session.stop()

    async def abort(self) -> None:
        """Drop the connection without closing the session: our znodes vanish only when the session expires."""
        if self._closed:
            return
        self._closed = True
        self._stop_watches()
        if self._session is None or self._registrations is None:
            return
        self._registrations.abandon()
        await self._session.drop()

    async def register(self, instance: Instance, ttl: float, on_state: StateListener) -> None:
        """Create (or take over) the instance's ephemeral znode; ``ttl`` is ignored (the session timeout rules)."""
        await self._live_registrations().register(instance, on_state)

    async def update(self, instance: Instance) -> None:
        """Rewrite the data of a registered instance (``NotRegisteredError`` if it is not, or no longer, ours)."""
        await self._live_registrations().update(instance)

    async def deregister(self, instance: Instance) -> None:
        """Delete the instance's znode (if this session owns it)."""
        await self._live_registrations().deregister(instance)

    async def set_status(self, namespace: str, service: str, instance_id: str, status: Status) -> Instance:
        """Rewrite the znode's data with the new status (``setData`` at the version read: its ephemeral owner, the
        registrant's session, stays; a concurrent write makes us read and try again)."""
        session = self._live_session()
        node_name = instance_id
        path = f"{self._layout.service_path(namespace, service)}/{node_name}"
        if foreign_key_of(instance_id) != instance_id and await session.request(
                "exists", session.client.exists_async, path) is None:
            node_name = foreign_key_of(instance_id)  # a foreign znode name, escaped into this id
            path = f"{self._layout.service_path(namespace, service)}/{node_name}"
        for _ in range(_REWRITE_ATTEMPTS):
            try:
                raw, stat = await session.request("get", session.client.get_async, path)
                data, changed = with_status(raw, status, namespace=namespace, service=service, node_name=node_name)
                await session.request("set", session.client.set_async, path, data, stat.version)
                return changed
            except NoNodeError:
                raise NotRegisteredError(f"{namespace}/{service}/{instance_id} is not registered") from None
            except BadVersionError:
                continue
        raise BackendUnavailableError(f"{namespace}/{service}/{instance_id} kept changing; try again")

    def adopt(self, instance: Instance) -> None:
        """Write ``instance`` back (not our earlier data) if the session ever expires and we heal."""
        if self._registrations is not None:
            self._registrations.adopt(instance)

    async def list(self, namespace: str, service: str) -> tuple[Instance, ...]:
        """Read every instance znode of a service."""
        session = self._live_session()
        path = self._layout.service_path(namespace, service)
        try:
            names = await session.request("get_children", session.client.get_children_async, path)
        except NoNodeError:
            return ()
        reads = await session.get_many([f"{path}/{name}" for name in names])
        instances = []
        for name, raw in zip(names, reads, strict=True):
            if raw is None:
                continue  # gone between the listing and the read
            instance = decode_or_none(raw, namespace, service, name)
            if instance is not None:
                instances.append(instance)
        return tuple(sorted(instances, key=lambda i: i.id))

    async def services(self, namespace: str) -> tuple[str, ...]:
        """Service directories of the namespace that hold at least one instance znode."""
        session = self._live_session()
        path = self._layout.namespace_path(namespace)
        try:
            names = await session.request("get_children", session.client.get_children_async, path)
        except NoNodeError:
            return ()
        candidates = [name for name in names if _is_service_name(name)]
        stats = await asyncio.gather(
            *(session.request("exists", session.client.exists_async, f"{path}/{name}") for name in candidates)
        )
        return tuple(sorted(name for name, stat in zip(candidates, stats, strict=True) if stat and stat.numChildren))

    def watch(self, namespace: str, service: str) -> ServiceWatch:
        """A new stream: the current snapshot, then one per change; stale while disconnected, re-listed after."""
        stream = ServiceWatch(
            self._live_session(), self._layout.service_path(namespace, service), namespace, service, self._own_creates
        )
        self._watches.add(stream)
        return stream

    # -- helpers -------------------------------------------------------------------------------------------------

    def _live_session(self) -> ZooKeeperSession:
        if self._closed:
            raise ClosedError("this ZooKeeper backend was closed")
        if self._session is None:
            raise DiscoveryError("the ZooKeeper backend is not started (call start() first)")
        return self._session

    def _live_registrations(self) -> Registrations:
        self._live_session()
        assert self._registrations is not None  # set together with the session
        return self._registrations

    def _stop_watches(self) -> None:
        for stream in list(self._watches):
            stream.stop()


def _is_service_name(name: str) -> bool:
    try:
        validation.validate_service_name(name)
    except ValidationError:
        return False
    return True
