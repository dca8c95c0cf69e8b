"""The fault-injecting relay against a local echo server: pass, blackhole (held, not dropped), delay, cut."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.harness.relay import Mode, Relay

ANSWER = 5.0  # generous: a loaded CI machine


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest_asyncio.fixture
async def relay() -> AsyncIterator[Relay]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    relay = await asyncio.to_thread(Relay("127.0.0.1", port).start)
    try:
        yield relay
    finally:
        await asyncio.to_thread(relay.close)
        server.close()
        await server.wait_closed()


async def _connect(relay: Relay) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(relay.host, relay.port)


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), ANSWER)


async def test_pass_through_forwards_both_ways(relay: Relay) -> None:
    reader, writer = await _connect(relay)
    assert await _round_trip(reader, writer, b"hello") == b"hello"
    assert relay.accepted == 1 and relay.mode is Mode.PASS
    writer.close()


async def test_blackhole_holds_bytes_until_healed(relay: Relay) -> None:
    reader, writer = await _connect(relay)
    assert await _round_trip(reader, writer, b"before") == b"before"
    await asyncio.to_thread(relay.blackhole)
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(TimeoutError):  # nothing comes back while partitioned
        await asyncio.wait_for(reader.readexactly(4), 0.3)
    late_reader, late_writer = await _connect(relay)  # accepted, but not connected upstream yet
    late_writer.write(b"late")
    await asyncio.to_thread(relay.pass_through)
    assert await asyncio.wait_for(reader.readexactly(4), ANSWER) == b"held"  # held, not dropped
    assert await asyncio.wait_for(late_reader.readexactly(4), ANSWER) == b"late"
    writer.close()
    late_writer.close()


async def test_delay_adds_latency(relay: Relay) -> None:
    reader, writer = await _connect(relay)
    await asyncio.to_thread(relay.delay, 0.2)
    started = time.monotonic()
    assert await _round_trip(reader, writer, b"slow") == b"slow"
    assert time.monotonic() - started >= 0.4  # one delay per direction
    writer.close()


async def test_cut_resets_open_and_new_connections(relay: Relay) -> None:
    reader, writer = await _connect(relay)
    assert await _round_trip(reader, writer, b"x") == b"x"
    await asyncio.to_thread(relay.cut)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), ANSWER)
    new_writer: asyncio.StreamWriter | None = None
    # A cut relay resets a new connection at once: that can surface in connect() itself or at the first read.
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        new_reader, new_writer = await _connect(relay)
        await _round_trip(new_reader, new_writer, b"y")
    await asyncio.to_thread(relay.pass_through)
    again_reader, again_writer = await _connect(relay)
    assert await _round_trip(again_reader, again_writer, b"z") == b"z"
    for w in (writer, new_writer, again_writer):
        if w is not None:
            w.close()


def test_only_loopback_addresses() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Relay("10.0.0.1", 80)
    with pytest.raises(ValueError, match="loopback"):
        Relay("127.0.0.1", 80, listen_host="0.0.0.0")
