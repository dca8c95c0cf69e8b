"""``DnsServer``: the authoritative ``cluster.local`` responder over UDP and TCP (asyncio, dnspython wire format).

UDP and TCP listen on the same address and port (port 0 picks a free one, shared by both).

What a hostile or careless client can and cannot do:

* **Amplification**: a UDP answer is at most :data:`MAX_UDP_PAYLOAD` (1,232) bytes whatever EDNS buffer size
  the query asks for (512 without EDNS); a bigger answer is sent empty with TC set, so the client retries over
  TCP. ``ANY`` gets one synthesized HINFO record (RFC 8482), never every record set.
* **Floods**: UDP queries are rate-limited per source address (token bucket, ``udp_rate_limit`` per second with
  a burst of twice that); every second refused query gets an empty TC answer no larger than the query (so a
  real client falls back to TCP), the others are dropped. TCP has a connection cap, an idle timeout between
  queries and a write timeout (a client that pipelines queries and never reads is cut off).
* **Cost per query**: a response is built from the catalog once per (question, EDNS shape, size limit,
  catalog version) and then served from a wire-format cache: only the query id, the RD flag and the question's
  letter case are copied in.
* **Garbage**: a packet that cannot be parsed, a response (QR set) and anything that fails inside are dropped
  without an answer, and logged at most once per source per minute (no traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from dataclasses import dataclass
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode

from discovery.services.catalog import ServiceCatalog
from discovery.services.dns.answers import DEFAULT_TTL, MAX_UDP_PAYLOAD, ZoneAnswers
from discovery.services.model import CLUSTER_DOMAIN

log = logging.getLogger("discovery.services.dns")

DEFAULT_DNS_PORT = 5353
#: UDP queries per second one source address may send (a burst of twice as many is allowed).
DEFAULT_UDP_RATE_LIMIT = 1000.0
DEFAULT_MAX_TCP_CONNECTIONS = 128
#: Seconds a TCP connection may wait for its next query (RFC 7766 suggests seconds, not minutes).
DEFAULT_TCP_IDLE_TIMEOUT = 10.0
#: Seconds an answer may wait to be written before the connection is closed.
DEFAULT_TCP_WRITE_TIMEOUT = 10.0
#: Answers kept in the wire cache (the oldest goes first; the whole cache is dropped on a catalog change).
CACHE_SIZE = 4096
_TRACKED_SOURCES = 10_000
_LOG_INTERVAL = 60.0
_MIN_UDP_PAYLOAD = 512
_MAX_TCP_MESSAGE = 65535
_HEADER = struct.Struct("!HHHHHH")
_QR = 0x8000
_OPCODE = 0x7800
_TC = 0x0200
_RD = 0x0100
_OPT = 41
_PADDING = 12

_CacheKey = tuple[bytes, bool, bool, int]


@dataclass(slots=True)
class DnsStats:
    """Counters since start.

    Not thread-safe: counted on the server's event loop; read it there.
    """

    queries: int = 0
    nxdomain: int = 0
    refused: int = 0
    #: Packets that could not be parsed (dropped).
    malformed: int = 0
    truncated: int = 0
    #: Packets not answered: malformed, responses (QR set), internal errors.
    dropped: int = 0
    #: UDP queries over the per-source rate (dropped, or answered with an empty TC).
    rate_limited: int = 0
    #: Answers served from the wire cache / built from the catalog.
    cache_hits: int = 0
    built: int = 0
    #: TCP connections closed at once because ``max_tcp_connections`` were open.
    tcp_refused: int = 0
    #: TCP connections closed because no query came within the idle timeout.
    tcp_idle_closed: int = 0
    #: TCP connections closed because an answer could not be written within the write timeout.
    tcp_write_timeouts: int = 0


class _SourceRate:
    """A token bucket per source address; the table of sources is bounded (the oldest entry goes first)."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, list[float]] = {}

    def allow(self, source: str) -> bool:
        now = time.monotonic()
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= _TRACKED_SOURCES:
                del self._buckets[next(iter(self._buckets))]
            self._buckets[source] = [self._burst - 1.0, now]
            return True
        tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True


class _OncePerInterval:
    """Whether a source may log again (at most once per ``_LOG_INTERVAL``); bounded like :class:`_SourceRate`."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def allow(self, source: str) -> bool:
        now = time.monotonic()
        last = self._last.get(source)
        if last is not None and now - last < _LOG_INTERVAL:
            return False
        if last is None and len(self._last) >= _TRACKED_SOURCES:
            del self._last[next(iter(self._last))]
        self._last[source] = now
        return True


def _question_shape(wire: bytes) -> tuple[int, bool, bool, int] | None:
    """For a plain query (one question, no compression, no records but an optional option-less-or-simple OPT):
    ``(end of the question, has EDNS, asks for padding, EDNS payload size)``; ``None`` for anything else."""
    size = len(wire)
    if size < 17:
        return None
    _id, flags, questions, answers, authority, additional = _HEADER.unpack_from(wire)
    if flags & (_QR | _OPCODE) or questions != 1 or answers or authority or additional > 1:
        return None
    position = 12
    while True:
        if position >= size:
            return None
        length = wire[position]
        if length == 0:
            position += 1
            break
        if length > 63:  # a compression pointer or an extended label type
            return None
        position += 1 + length
    if position - 12 > 255:
        return None
    end = position + 4
    if additional == 0:
        return (end, False, False, 0) if end == size else None
    if end + 11 > size or wire[end] != 0:
        return None
    rtype, payload, ttl, length = struct.unpack_from("!HHIH", wire, end + 1)
    if rtype != _OPT or (ttl >> 16) & 0xFF or end + 11 + length != size:  # EDNS version 0 only
        return None
    padded = False
    option = end + 11
    while option < size:
        if option + 4 > size:
            return None
        code, option_length = struct.unpack_from("!HH", wire, option)
        option += 4 + option_length
        padded = padded or code == _PADDING
    if option != size:
        return None
    return end, True, padded, payload


def _udp_limit(has_edns: bool, payload: int) -> int:
    return min(max(payload, _MIN_UDP_PAYLOAD), MAX_UDP_PAYLOAD) if has_edns else _MIN_UDP_PAYLOAD


def _with_query_identity(cached: bytes, wire: bytes, question_end: int) -> bytes:
    """A cached answer re-addressed to ``wire``: its id, its RD flag, its question (same length, any case)."""
    flags = ((cached[2] << 8 | cached[3]) & ~_RD) | ((wire[2] << 8 | wire[3]) & _RD)
    return wire[:2] + flags.to_bytes(2, "big") + cached[4:12] + wire[12:question_end] + cached[question_end:]


def _empty_truncated(wire: bytes) -> bytes | None:
    """An empty TC answer to a plain query (never larger than the query): "ask again over TCP"."""
    shape = _question_shape(wire)
    if shape is None:
        return None
    flags = _QR | _TC | ((wire[2] << 8 | wire[3]) & _RD)
    return wire[:2] + struct.pack("!HHHHH", flags, 1, 0, 0, 0) + wire[12:shape[0]]


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # the selector transport is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        source = str(addr[0])
        reply = self._server.answer_udp(data, source)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsServer:
    """Serves a catalog's Services as DNS (see :mod:`discovery.services.dns.answers` and the module docs).

    ``udp_rate_limit`` is queries per second per source address (``None``: no limit); the TCP limits are the
    connection cap and the idle and write timeouts in seconds. Not thread-safe: use it on its catalog's event loop.
    """

    def __init__(
        self,
        catalog: ServiceCatalog,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_DNS_PORT,
        domain: str = CLUSTER_DOMAIN,
        ttl: int = DEFAULT_TTL,
        udp_rate_limit: float | None = DEFAULT_UDP_RATE_LIMIT,
        max_tcp_connections: int = DEFAULT_MAX_TCP_CONNECTIONS,
        tcp_idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT,
        tcp_write_timeout: float = DEFAULT_TCP_WRITE_TIMEOUT,
    ) -> None:
        self._answers = ZoneAnswers(catalog, domain=domain, ttl=ttl)
        self.host = host
        self.port = port
        self.stats = DnsStats()
        self._rate = None if udp_rate_limit is None else _SourceRate(udp_rate_limit, 2 * udp_rate_limit)
        self._max_tcp_connections = max_tcp_connections
        self._tcp_idle_timeout = tcp_idle_timeout
        self._tcp_write_timeout = tcp_write_timeout
        self._logged = _OncePerInterval()
        self._cache: dict[_CacheKey, bytes] = {}
        self._cache_version = -1
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind UDP, then TCP on the same port (with port 0, retry until a port is free for both)."""
        loop = asyncio.get_running_loop()
        for _ in range(20):
            transport, _protocol = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, self.port)
            )
            port = int(transport.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port, reuse_address=True)
            except OSError:
                transport.close()
                if self.port != 0:
                    raise
                continue
            self._udp, self.port = transport, port
            log.info("DNS for %s on %s:%d (UDP and TCP)", self._answers.zone, self.host, port)
            return
        raise OSError(f"no port on {self.host} was free for both UDP and TCP")

    async def close(self) -> None:
        """Stop listening and close the open TCP connections."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._tcp_clients):
                task.cancel()
            await asyncio.gather(*self._tcp_clients, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def tcp_connections(self) -> int:
        """TCP connections open now."""
        return len(self._tcp_clients)

    def answer_udp(self, wire: bytes, source: str) -> bytes | None:
        """The reply to one UDP datagram from ``source``, after the per-source rate limit."""
        if self._rate is not None and not self._rate.allow(source):
            self.stats.rate_limited += 1
            # "Slip" every second one: a real client behind a spoofed flood still learns to use TCP.
            return _empty_truncated(wire) if self.stats.rate_limited % 2 == 0 else None
        return self.answer(wire, udp=True, source=source)

    def answer(self, wire: bytes, *, udp: bool, source: str = "-") -> bytes | None:
        """The reply to one query in wire format; ``None``: drop it (unparseable, a response, an internal error).

        Never raises: whatever the bytes, the outcome is a reply or ``None``.
        """
        self.stats.queries += 1
        try:
            return self._answer(wire, udp, source)
        except Exception as error:  # one packet must never take the responder down or flood the log
            self._drop(source, f"a query that failed inside ({type(error).__name__})")
            return None

    def _answer(self, wire: bytes, udp: bool, source: str) -> bytes | None:
        if len(wire) >= 4 and wire[2] & 0x80:
            self._drop(source, "a response (QR set) sent as a query")
            return None
        version = self._answers.version
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version
        shape = _question_shape(wire)
        key: _CacheKey | None = None
        if shape is not None:
            end, has_edns, padded, payload = shape
            limit = _udp_limit(has_edns, payload) if udp else _MAX_TCP_MESSAGE
            # The name part folded to lower case (ASCII only), the type and class as they are.
            key = (wire[12:end - 4].lower() + wire[end - 4:end], has_edns, padded, limit)
            cached = self._cache.get(key)
            if cached is not None:
                self.stats.cache_hits += 1
                self._count(cached[3] & 0x0F)
                return _with_query_identity(cached, wire, end)
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, struct.error):
            self.stats.malformed += 1
            self._drop(source, "a packet that is not a DNS message")
            return None
        limit = _udp_limit(query.edns >= 0, query.payload) if udp else _MAX_TCP_MESSAGE
        response = self._answers.respond(query, size_limit=limit)
        self.stats.built += 1
        self._count(response.rcode())
        reply = self._render(response, limit, udp)
        if key is not None:
            if len(self._cache) >= CACHE_SIZE:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = reply
        return reply

    def _count(self, rcode: int) -> None:
        if rcode == dns.rcode.NXDOMAIN:
            self.stats.nxdomain += 1
        elif rcode == dns.rcode.REFUSED:
            self.stats.refused += 1

    def _render(self, response: dns.message.Message, limit: int, udp: bool) -> bytes:
        if response.flags & dns.flags.TC:  # known too big before anything was built
            self.stats.truncated += 1
            return response.to_wire(max_size=limit)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            pass
        if not udp and response.additional:  # over TCP the answer matters more than the glue
            response.additional.clear()
            with contextlib.suppress(dns.exception.TooBig):
                return response.to_wire(max_size=limit)
        self.stats.truncated += 1
        response.answer.clear()
        response.additional.clear()
        response.authority.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)

    def _drop(self, source: str, what: str) -> None:
        self.stats.dropped += 1
        if self._logged.allow(source):
            log.warning("dropped %s from %s (logged at most once a minute per source)", what, source)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tcp_clients) >= self._max_tcp_connections:
            self.stats.tcp_refused += 1
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:  # so that close() can cut open connections
            self._tcp_clients.add(task)
            task.add_done_callback(self._tcp_clients.discard)
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) else "-"
        try:
            while True:
                try:
                    async with asyncio.timeout(self._tcp_idle_timeout):
                        (length,) = struct.unpack("!H", await reader.readexactly(2))
                        wire = await reader.readexactly(length)
                except TimeoutError:
                    self.stats.tcp_idle_closed += 1
                    break
                reply = self.answer(wire, udp=False, source=source)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                try:
                    async with asyncio.timeout(self._tcp_write_timeout):
                        await writer.drain()
                except TimeoutError:
                    self.stats.tcp_write_timeouts += 1
                    writer.transport.abort()  # drop what is buffered: the client is not reading
                    break
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # closing; end quietly
        finally:
            writer.close()


__all__ = ["DEFAULT_DNS_PORT", "MAX_UDP_PAYLOAD", "DnsServer", "DnsStats"]
