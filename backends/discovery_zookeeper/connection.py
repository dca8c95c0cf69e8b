"""One kazoo client and its session, seen from the event loop.

State changes reach the loop as :class:`SessionEvent` values (``SUSPENDED``, ``EXPIRED``, ``CONNECTED`` with a
flag telling whether the session is new). The kazoo listener only forwards; it never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import AuthFailedError, NoAuthError, NoNodeError, UnimplementedError
from kazoo.retry import KazooRetry

from discovery.core.errors import AuthenticationError, BackendUnavailableError, PermissionDeniedError
from discovery_zookeeper import multiread, persistent
from discovery_zookeeper.bridge import CONNECTION_ERRORS, LoopHandler, await_kazoo, call_in_loop, finish, in_own_thread
from discovery_zookeeper.security import kazoo_logger, tls_preflight
from discovery_zookeeper.settings import ZooKeeperConfig

logger = logging.getLogger("discovery.backends.zookeeper.connection")

#: How long the start waits for a server that refused ``addWatch`` to close the connection (ZOOKEEPER-1495: at
#: once, right behind the refusal) before going on with it open.
PROBE_DROP_WAIT = 2.0


class SessionEvent(enum.Enum):
    """What the rest of the backend needs to know about the connection."""

    SUSPENDED = "suspended"
    EXPIRED = "expired"
    RECONNECTED = "reconnected"
    NEW_SESSION = "new-session"


SessionListener = Callable[[SessionEvent], None]


class ZooKeeperSession:
    """Owns the ``KazooClient``; offers awaitable requests with timeouts and loop-side state events."""

    def __init__(self, config: ZooKeeperConfig) -> None:
        self._config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[SessionListener] = []
        self._session_id: int | None = None
        self.connected = asyncio.Event()
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._stopping = False
        #: Resolved by the first CONNECTED or LOST state while :meth:`start` waits.
        self._first_state: asyncio.Future[str] | None = None
        # Persistent recursive watches by the server's path: heard by every client this session makes.
        self._persistent_watchers: dict[str, set[persistent.Watcher]] = {}
        #: Whether the server has persistent watches (ZooKeeper 3.6+): ``None`` until the first one is armed;
        #: ``False`` also when the URL turns them off.
        self.persistent_watches: bool | None = None if config.persistent_watches else False
        #: ``multiRead`` requests sent (diagnostics and tests).
        self.multi_reads = 0
        self._epochs = itertools.count(1)
        self._epoch = 0
        self.client = self._new_client()

    def _new_client(self) -> KazooClient:
        # kazoo's own reconnect loop: quick first retries, capped well below any session timeout so a restarted
        # server is found again before the session expires; kazoo adds random jitter to every delay.
        retry = KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_jitter=0.3, max_delay=1.0)
        client = KazooClient(
            hosts=self._config.hosts,
            timeout=self._config.session_timeout,
            connection_retry=retry,
            command_retry=None,
            handler=LoopHandler(),
            logger=kazoo_logger(self._config.security),
            **self._config.security.kazoo_arguments(),
        )
        client.add_listener(lambda state: self._on_kazoo_state(client, state))
        persistent.hear_persistent_watches(client, self._persistent_watchers)
        return client

    @property
    def session_id(self) -> int | None:
        """The id of the live session (``None`` while disconnected)."""
        client_id = self.client.client_id
        return None if client_id is None else int(client_id[0])

    @property
    def negotiated_timeout(self) -> float:
        """The session timeout the server granted (it clamps to ``[2, 20]`` ticks by default)."""
        granted = getattr(self.client, "_session_timeout", None)
        return float(granted) / 1000.0 if granted else self._config.session_timeout

    def add_listener(self, listener: SessionListener) -> None:
        """Call ``listener`` on the event loop for every session event."""
        self._listeners.append(listener)

    def remove_listener(self, listener: SessionListener) -> None:
        """Stop calling ``listener``."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def start(self) -> None:
        """Connect, or raise ``BackendUnavailableError`` after ``connect_timeout``.

        However it ends without a session (timeout, refusal, cancellation), kazoo's threads are stopped first.
        """
        self._loop = asyncio.get_running_loop()
        try:
            tls = self._config.security.tls
            if tls is not None:
                await in_own_thread(
                    tls_preflight, self._config.hosts, tls, min(self._config.connect_timeout, 5.0),
                    name="zookeeper-tls-preflight",
                )
            self._first_state = self._loop.create_future()
            self.client.start_async()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.connect_timeout):
                    await self._first_state
            if not self.client.connected:
                raise BackendUnavailableError(
                    f"could not connect to ZooKeeper at {self._config.hosts} within {self._config.connect_timeout:g}s"
                )
        except BaseException:
            self._stopping = True
            await finish(in_own_thread(self._stop_quietly, name="zookeeper-stop"))
            raise
        finally:
            self._first_state = None
        self._session_id = self.session_id
        self.connected.set()
        if self.persistent_watches is None:
            await self._probe_persistent_watches()

    async def _probe_persistent_watches(self) -> None:
        """Learn whether the server has persistent watches before anything relies on them: arm one on a path that
        has no children and remove it. A server before 3.6 refuses and closes the connection (ZOOKEEPER-1495); the
        start then waits for kazoo to connect the same session again, so that no request of the caller is lost
        with that connection."""
        client = self.client
        probe = self._server_path(client, f"{self._config.root}/.persistent-watch-probe")
        dropped = asyncio.Event()

        def heard(event: SessionEvent) -> None:
            if event in (SessionEvent.SUSPENDED, SessionEvent.EXPIRED):
                dropped.set()

        self.add_listener(heard)  # before the request: the drop may reach the loop right behind the refusal
        try:
            await self.request("addWatch", persistent.send, client,
                               persistent.AddWatch(probe, persistent.MODE_PERSISTENT_RECURSIVE))
        except UnimplementedError:
            self._without_persistent_watches()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROBE_DROP_WAIT):
                    await dropped.wait()
                async with asyncio.timeout(self._config.connect_timeout):
                    await self.connected.wait()
            return
        except BackendUnavailableError as error:
            logger.debug("probing for persistent watches: %s (tried again with the first watch)", error)
            return
        finally:
            self.remove_listener(heard)
        self.persistent_watches = True
        with contextlib.suppress(*CONNECTION_ERRORS):
            persistent.send(client, persistent.RemoveWatches(probe, persistent.WATCHER_TYPE_ANY))

    async def stop(self) -> None:
        """Close the session (ephemeral nodes are deleted by the server at once) and free kazoo's threads."""
        self._stopping = True
        self._cancel_expiry_timer()
        self.connected.clear()
        await finish(in_own_thread(self._stop_quietly, name="zookeeper-stop"))

    async def drop(self) -> None:
        """Disconnect *without* closing the session, as a crashed process would.

        kazoo has no public call for this: ``stop()`` always sends CloseSession. We mark the client stopped (so
        its connection loop does not reconnect), then shut the TCP socket down under it; the loop sees the
        connection drop and exits without ever queueing CloseSession. The server keeps the session until it
        times out, so its ephemeral nodes vanish only by expiry. See docs/decisions/zookeeper-abort.md.
        """
        self._stopping = True
        self._cancel_expiry_timer()
        self.connected.clear()
        await finish(in_own_thread(_drop_client, self.client, self._config.session_timeout, name="zookeeper-drop"))

    def _stop_quietly(self) -> None:
        try:
            self.client.stop()
        except Exception as error:  # kazoo raises assorted errors when stopping a half-open client
            logger.debug("stopping kazoo: %s", error)
        with contextlib.suppress(Exception):
            self.client.close()

    # -- kazoo thread → loop -------------------------------------------------------------------------------------

    def _on_kazoo_state(self, client: KazooClient, state: str) -> None:
        # On kazoo's connection thread, before it reads any answer of a new connection.
        self._epoch = next(self._epochs)
        if self._loop is not None:
            call_in_loop(self._loop, self._on_state, client, state)

    def _on_state(self, client: KazooClient, state: str) -> None:
        waiter = self._first_state
        if client is self.client and waiter is not None and not waiter.done() and state != KazooState.SUSPENDED:
            waiter.set_result(state)
        if client is not self.client or self._stopping:
            return  # a replaced client's last words
        if state == KazooState.CONNECTED:
            # Read now, on the loop: the id kazoo reports after this event tells old session from new.
            current = self.session_id
            if current is None:
                return  # already gone again; the next event will tell
            self._cancel_expiry_timer()
            self.connected.set()
            event = SessionEvent.RECONNECTED if current == self._session_id else SessionEvent.NEW_SESSION
            self._session_id = current
        elif state == KazooState.SUSPENDED:
            self.connected.clear()
            self._arm_expiry_timer()
            event = SessionEvent.SUSPENDED
        else:
            self.connected.clear()
            event = SessionEvent.EXPIRED
        self._emit(event)

    def _emit(self, event: SessionEvent) -> None:
        logger.debug("ZooKeeper session event %s (session %s)", event.value, self._session_id)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("session listener failed")

    # -- Curator-style simulated expiry --------------------------------------------------------------------------

    def _arm_expiry_timer(self) -> None:
        if self._expiry_timer is None and self._loop is not None:
            self._expiry_timer = self._loop.call_later(self.negotiated_timeout, self._simulate_expiry)

    def _cancel_expiry_timer(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None

    def _simulate_expiry(self) -> None:
        """No server has answered for a whole session timeout: treat the session as expired and start a new one.

        The server expires a session it has not heard from for its timeout, so ours is (almost certainly) gone.
        Waiting for the server to say so can take forever: a server that lost its data refuses a client that
        has seen a newer zxid, and kazoo would retry that session endlessly. Curator does the same by default
        (``StandardConnectionHandlingPolicy``). See docs/decisions/zookeeper-simulated-expiry.md.
        """
        self._expiry_timer = None
        if self.connected.is_set() or self._stopping or self._loop is None:
            return
        logger.warning("no ZooKeeper server answered for %gs: treating session as expired", self.negotiated_timeout)
        old = self.client
        self.client = self._new_client()
        self.client.start_async()
        threading.Thread(
            target=_drop_client, args=(old, self._config.session_timeout), name="zookeeper-drop", daemon=True
        ).start()
        self._emit(SessionEvent.EXPIRED)

    # -- persistent watches --------------------------------------------------------------------------------------

    async def add_persistent_watch(self, path: str, watcher: persistent.Watcher) -> bool:
        """Arm a persistent recursive watch on ``path``: ``watcher`` hears every node created, changed or deleted
        below it from now on (:mod:`discovery_zookeeper.persistent`). Arm it again after every reconnect: the server
        forgets it with the connection, and kazoo re-arms only its one-shot watches. ``False``: the server has no
        persistent watches (before ZooKeeper 3.6); nothing is armed, use one-shot watches.
        """
        if self.persistent_watches is False:
            return False
        return await self.persistent_watch_armed(self.send_persistent_watch(path, watcher))

    def send_persistent_watch(self, path: str, watcher: persistent.Watcher) -> Any:
        """:meth:`add_persistent_watch` without waiting for the answer (requests sent right behind it reach the
        server after it is armed); await it with :meth:`persistent_watch_armed`."""
        client = self.client
        full = self._server_path(client, path)
        self._persistent_watchers.setdefault(full, set()).add(watcher)
        return self.send(
            "addWatch", persistent.send, client, persistent.AddWatch(full, persistent.MODE_PERSISTENT_RECURSIVE)
        )

    async def persistent_watch_armed(self, request: Any) -> bool:
        """Whether the watch :meth:`send_persistent_watch` sent is armed (``False``: the server has none)."""
        try:
            await self.reply("addWatch", request)
        except UnimplementedError:
            self._without_persistent_watches()
            return False
        self.persistent_watches = True
        return True

    def _without_persistent_watches(self) -> None:
        """The server refused ``addWatch`` (before ZooKeeper 3.6): nothing relies on persistent watches from here."""
        self.persistent_watches = False
        self._persistent_watchers.clear()
        logger.info("this ZooKeeper has no persistent watches (added in 3.6): services are followed with one-shot"
                    " watches and each registration's owner is checked with a request")

    @property
    def connection_epoch(self) -> int:
        """A number that changes with every change of the connection (dropped, suspended, connected again). Counted
        on kazoo's connection thread before it reads any answer of the new connection: an answer the loop has seen
        that came on a later connection than the epoch read before its request was sent shows a different number."""
        return self._epoch

    async def cover(self, path: str, watcher: persistent.Watcher) -> int | None:
        """:meth:`add_persistent_watch`, returning the :attr:`connection_epoch` of the connection the watch is armed
        on; ``None`` if it is not (no persistent watches here, or the connection changed while it was armed)."""
        before = self._epoch
        if not await self.add_persistent_watch(path, watcher):
            return None
        return before if self._epoch == before else None

    def remove_persistent_watch(self, path: str, watcher: persistent.Watcher) -> None:
        """``watcher`` no longer hears ``path``; the watch is removed at the server with its last watcher (without
        waiting: a watch the server already forgot, or a request lost with the connection, changes nothing)."""
        client = self.client
        full = self._server_path(client, path)
        watchers = self._persistent_watchers.get(full)
        if watchers is None:
            return
        watchers.discard(watcher)
        if watchers:
            return
        del self._persistent_watchers[full]
        if self.connected.is_set():
            with contextlib.suppress(*CONNECTION_ERRORS):
                persistent.send(client, persistent.RemoveWatches(full, persistent.WATCHER_TYPE_ANY))

    @staticmethod
    def _server_path(client: KazooClient, path: str) -> str:
        return f"{client.chroot}{path}" if client.chroot else path

    # -- requests ------------------------------------------------------------------------------------------------

    async def request(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a kazoo ``*_async`` call and await it with the request timeout."""
        return await self.reply(what, self.send(what, call, *args, **kwargs))

    async def get_many(self, paths: list[str], watcher: Callable[..., Any] | None = None) -> list[bytes | None]:
        """The data of each node (``None``: no such node), with ``watcher`` armed on each. Every request is sent
        before the first answer is awaited: they travel back to back and are answered in order, with neither a
        round trip nor a task per node. Without a watcher, on a server known to be 3.6+ (it armed a persistent
        watch), the reads go as ``multiRead`` requests of up to :data:`multiread.MAX_READS` nodes each, else as one
        ``get`` per node."""
        if watcher is None and len(paths) > 1 and self.persistent_watches is True:
            return await self._read_many(paths)
        get = self.client.get_async
        sent = [self.send("get", get, path, watcher) for path in paths]
        data: list[bytes | None] = []
        for request in sent:
            try:
                raw, _ = await self.reply("get", request)
            except NoNodeError:
                raw = None
            data.append(raw)
        return data

    async def _read_many(self, paths: list[str]) -> list[bytes | None]:
        client = self.client
        step = multiread.MAX_READS
        sent = [
            self.send("multiRead", persistent.send, client,
                      multiread.MultiRead(tuple(self._server_path(client, path) for path in paths[at:at + step])))
            for at in range(0, len(paths), step)
        ]
        self.multi_reads += len(sent)
        data: list[bytes | None] = []
        for request in sent:
            for result in await self.reply("multiRead", request):
                if isinstance(result, NoNodeError):
                    data.append(None)
                elif isinstance(result, Exception):
                    raise _refusal("get", result)
                else:
                    data.append(result)
        return data

    def send(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Queue a kazoo ``*_async`` call now (its ``IAsyncResult``), to be awaited with :meth:`reply`: requests sent
        one after another, before either is awaited, reach the server back to back and are answered in order."""
        try:
            return call(*args, **kwargs)
        except CONNECTION_ERRORS as error:
            raise BackendUnavailableError(f"ZooKeeper {what} failed: {type(error).__name__}: {error}") from error

    async def reply(self, what: str, async_result: Any) -> Any:
        """Await the answer to a request :meth:`send` queued, with the request timeout."""
        try:
            return await await_kazoo(async_result, self._config.request_timeout, what)
        except (NoAuthError, AuthFailedError) as error:
            raise _refusal(what, error) from None


def _refusal(what: str, error: Exception) -> Exception:
    """What a request's kazoo error is raised as: ours for a refused identity, else the error itself."""
    if isinstance(error, NoAuthError):
        return PermissionDeniedError(f"ZooKeeper denied {what}: the ACL does not allow our identity")
    if isinstance(error, AuthFailedError):
        return AuthenticationError(f"ZooKeeper rejected our credentials during {what}")
    return error


def _drop_client(client: KazooClient, wait: float) -> None:
    """Stop a kazoo client *without* sending CloseSession, and free its threads (blocking; run in an executor).

    kazoo has no public call for this: ``stop()`` always queues CloseSession. We mark the client stopped (so its
    connection loop does not reconnect), then shut its TCP socket down; the loop sees the connection drop and
    exits without ever sending CloseSession.
    """
    # kazoo privates (pinned by tests/unit/test_private_dependencies.py): its connection handler and stop flag.
    connection = client._connection  # noqa: SLF001
    client._stopped.set()  # noqa: SLF001
    sock: socket.socket | None = getattr(connection, "_socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    connection.connection_stopped.wait(wait)
    with contextlib.suppress(Exception):
        client.handler.stop()
    with contextlib.suppress(Exception):
        client.close()
