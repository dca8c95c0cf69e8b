"""Many node reads in one request: ZooKeeper 3.6+ ``multiRead`` through kazoo's request queue.

kazoo 2.11 has no call for it (its ``transaction()`` is ``multi``, writes only). Each ``get`` kazoo sends costs its
connection thread a wake-up, a queue hand-off and a reply dispatch: listing 50 000 instances over 5 000 services
with one ``get`` per node took 10-13 s of CPU, nearly all of it kazoo's; the same reads as one ``multiRead`` per
service took 2-3 s (throwaway measurement in the 2026-12-01 session, docs/decisions/zookeeper-watches.md). The
server answers each read of a ``multiRead`` on its own (a missing or forbidden node is an error result for that
read only, not for the request) and all of them in one step, so they reflect one moment.

The request goes through kazoo's own queue as :mod:`discovery_zookeeper.persistent`'s do (``persistent.send``);
its paths are the server's (no chroot handling) and it arms no watch (a ``multiRead`` read cannot hand kazoo a
watcher): it is for streams on a persistent watch, which needs 3.6+ too.
"""

from __future__ import annotations

from collections import namedtuple

from kazoo.exceptions import EXCEPTIONS, KazooException, ZookeeperError
from kazoo.protocol.serialization import int_struct, multiheader_struct, read_buffer, stat_struct, write_string

#: ZooKeeper's opcodes: the request, the one read it carries here, and an error result.
MULTI_READ = 22
GET_DATA = 4
ERROR = -1
#: The most reads sent in one request: an answer of 200 of this library's records is ~90 kB (a foreign node can
#: hold up to 1 MiB; the requests go back to back, so a service of thousands of nodes still costs no round trip
#: per chunk).
MAX_READS = 200


class MultiRead(namedtuple("MultiRead", "paths")):
    """``multiRead`` of the data of ``paths`` (server paths), shaped as kazoo's request classes. Its answer is one
    item per path: the node's data (``bytes``, or ``None`` for a node without data), or the kazoo exception of that
    read (``NoNodeError``, ``NoAuthError``...)."""

    __slots__ = ()
    type = MULTI_READ

    def serialize(self) -> bytearray:
        """The request body: a ``getData`` without watch per path, then the end marker."""
        body = bytearray()
        for path in self.paths:
            body.extend(multiheader_struct.pack(GET_DATA, False, -1))
            body.extend(write_string(path))
            body.append(0)  # no watch
        body.extend(multiheader_struct.pack(-1, True, -1))
        return body

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> list[bytes | KazooException | None]:
        """The answer: one result per read, in order."""
        results: list[bytes | KazooException | None] = []
        while True:
            kind, done, _ = multiheader_struct.unpack_from(buffer, offset)
            offset += multiheader_struct.size
            if done:
                return results
            if kind == GET_DATA:
                data, offset = read_buffer(buffer, offset)
                offset += stat_struct.size
                results.append(data)
            elif kind == ERROR:
                code = int_struct.unpack_from(buffer, offset)[0]
                offset += int_struct.size
                error = EXCEPTIONS.get(code)  # not EXCEPTIONS[code]: an unknown code raises RuntimeError there
                results.append(error() if error is not None else ZookeeperError(f"error code {code}"))
            else:
                raise ValueError(f"unexpected result type {kind} in a multiRead answer")
