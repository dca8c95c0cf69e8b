"""Persistent recursive watches (ZooKeeper 3.6+ ``addWatch``) on a kazoo client.

A persistent recursive watch on a service's znode is armed once and reports every node created, changed or deleted
below it, by path, until removed (or the connection is lost): a stream then re-reads only the node an event names,
where one-shot watches make it list the whole service again on every change and re-arm a data watch per node
(docs/decisions/zookeeper-watches.md; measured by ``benchmarks/zookeeper_watch_shapes.py``).

kazoo 2.11 has no call for it. The requests go through kazoo's own request queue (``KazooClient._call``) as request
classes of kazoo's shape; kazoo's connection thread looks up one-shot watchers only by the event's exact path, so
:func:`hear_persistent_watches` also hands each event to the persistent watchers of the node's parent (or of the
node itself), right after kazoo's own dispatch. Both kazoo internals are pinned by
``tests/unit/test_private_dependencies.py``.

A server before 3.6 answers ``addWatch`` with ``UnimplementedException`` and then closes the connection
(ZOOKEEPER-1495): the caller falls back to one-shot watches, and kazoo reconnects the same session.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.protocol.serialization import Watch, int_struct, write_string
from kazoo.protocol.states import EVENT_TYPE_MAP, WatchedEvent

#: ZooKeeper's opcodes and the enum values their requests carry.
ADD_WATCH = 106
REMOVE_WATCHES = 18
MODE_PERSISTENT_RECURSIVE = 1  # AddWatchMode
#: The WatcherType that removes a persistent watch: ``Any``. ZooKeeper 3.8 and 3.9 refuse ``PersistentRecursive``
#: (5) there as an invalid WatcherType and drop the connection; ``Any`` also removes one-shot watches on the same
#: path, which a stream on a persistent watch does not arm.
WATCHER_TYPE_ANY = 3

Watcher = Callable[[WatchedEvent], None]


class _PathAndNumber(namedtuple("_PathAndNumber", "path number")):
    """A request whose body is a path and a number and whose reply has none, shaped as kazoo's request classes."""

    __slots__ = ()
    type: int

    def serialize(self) -> bytearray:
        """The request body."""
        body = bytearray(write_string(self.path))
        body.extend(int_struct.pack(self.number))
        return body

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> bool:
        """The reply has no body."""
        return True


class AddWatch(_PathAndNumber):
    """``addWatch(path, mode)``."""

    __slots__ = ()
    type = ADD_WATCH


class RemoveWatches(_PathAndNumber):
    """``removeWatches(path, watcher type)``."""

    __slots__ = ()
    type = REMOVE_WATCHES


def send(client: KazooClient, request: AddWatch | RemoveWatches) -> Any:
    """Queue ``request`` on ``client`` as kazoo queues its own (an ``IAsyncResult``, as its ``*_async`` calls return).

    ``path`` must be the server's path: these requests bypass kazoo's chroot handling.
    """
    result = client.handler.async_result()
    client._call(request, result)  # noqa: SLF001  # kazoo's request queue; pinned by test_private_dependencies
    return result


def hear_persistent_watches(client: KazooClient, watchers: dict[str, set[Watcher]]) -> None:
    """Make ``client``'s connection hand each watch event also to ``watchers[parent]`` (then ``watchers[path]``),
    keyed by the server's path. Call once, before the client starts; ``watchers`` may change at any time after.

    The watchers run on kazoo's connection thread right after kazoo's own dispatch of the event (so a one-shot
    watcher of the node hears it first); they must only hand over (:class:`~discovery_zookeeper.bridge.LoopWatcher`).
    """
    connection = client._connection  # noqa: SLF001  # kazoo's connection handler; pinned by test_private_dependencies
    read_watch_event = connection._read_watch_event  # noqa: SLF001

    def read_and_hear(buffer: bytes, offset: int) -> Any:
        result = read_watch_event(buffer, offset)
        if watchers:
            watch, _ = Watch.deserialize(buffer, offset)
            hearing = watchers.get(watch.path.rpartition("/")[0]) or watchers.get(watch.path)
            event_type = EVENT_TYPE_MAP.get(watch.type)
            if hearing and event_type is not None and not client._stopped.is_set():  # noqa: SLF001
                event = WatchedEvent(event_type, client._state, client.unchroot(watch.path))  # noqa: SLF001
                for watcher in list(hearing):  # a copy: the loop may add or remove one meanwhile
                    watcher(event)
        return result

    connection._read_watch_event = read_and_hear  # noqa: SLF001
