"""``DnsServer``: the authoritative ``cluster.local`` responder over UDP and TCP (asyncio, dnspython wire format).

UDP and TCP listen on the same address and port (port 0 picks a free one, shared by both). A UDP answer that
does not fit the client's buffer (512 bytes, or its EDNS size) is sent truncated with TC set, so the client
retries over TCP, as RFC 1035/7766 ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import dataclass
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode

from discovery.services.catalog import ServiceCatalog
from discovery.services.dns.answers import DEFAULT_TTL, ZoneAnswers
from discovery.services.model import CLUSTER_DOMAIN

log = logging.getLogger("discovery.services.dns")

DEFAULT_DNS_PORT = 5353
_MAX_TCP_IDLE = 30.0


@dataclass(slots=True)
class DnsStats:
    """Counters since start.

    Not thread-safe: counted on the server's event loop; read it there.
    """

    queries: int = 0
    nxdomain: int = 0
    refused: int = 0
    malformed: int = 0
    truncated: int = 0


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # the selector transport is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        reply = self._server.answer(data, udp=True)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsServer:
    """Serves a catalog's Services as DNS (see :mod:`discovery.services.dns.answers`).

    Not thread-safe: use it on its catalog's event loop.
    """

    def __init__(
        self,
        catalog: ServiceCatalog,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_DNS_PORT,
        domain: str = CLUSTER_DOMAIN,
        ttl: int = DEFAULT_TTL,
    ) -> None:
        self._answers = ZoneAnswers(catalog, domain=domain, ttl=ttl)
        self.host = host
        self.port = port
        self.stats = DnsStats()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

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
        """Stop listening."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def answer(self, wire: bytes, *, udp: bool) -> bytes | None:
        """The reply to one query in wire format (``None`` when it cannot even be parsed)."""
        self.stats.queries += 1
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            self.stats.malformed += 1
            return _formerr(wire)
        response = self._answers.respond(query)
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            self.stats.nxdomain += 1
        elif rcode == dns.rcode.REFUSED:
            self.stats.refused += 1
        limit = max(512, query.payload if query.edns >= 0 else 512) if udp else 65535
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            self.stats.truncated += 1
            response.answer.clear()
            response.additional.clear()
            response.authority.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(_MAX_TCP_IDLE):
                    header = await reader.readexactly(2)
                    (length,) = struct.unpack("!H", header)
                    wire = await reader.readexactly(length)
                reply = self.answer(wire, udp=False)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # closing; end quietly
        finally:
            writer.close()


def _formerr(wire: bytes) -> bytes | None:
    """A bare FORMERR echoing the query id, if the message has at least a header."""
    if len(wire) < 12:
        return None
    (query_id,) = struct.unpack("!H", wire[:2])
    flags = 0x8000 | dns.rcode.FORMERR  # QR + FORMERR
    return struct.pack("!HHHHHH", query_id, flags, 0, 0, 0, 0)


__all__ = ["DEFAULT_DNS_PORT", "DnsServer", "DnsStats"]
