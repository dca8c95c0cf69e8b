"""Real local TCP servers for the proxy tests, and small helpers."""

from __future__ import annotations

import asyncio
import contextlib


class NamedServer:
    """A TCP server on 127.0.0.1:<free port> that greets with its name, then echoes each line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    async def start(self) -> NamedServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._clients.add(writer)
        try:
            writer.write(f"{self.name}\n".encode())
            await writer.drain()
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


class Client:
    """One connection through the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, greeting: str) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting = greeting

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float = 5.0) -> Client:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            greeting = (await reader.readline()).decode().strip()
        return cls(reader, writer, greeting)

    async def echo(self, text: str, timeout: float = 5.0) -> str:
        async with asyncio.timeout(timeout):
            self.writer.write(f"{text}\n".encode())
            await self.writer.drain()
            return (await self.reader.readline()).decode().strip()

    def close(self) -> None:
        self.writer.close()


async def greeting_of(host: str, port: int) -> str:
    """Connect, read the greeting (the backend server's name; empty when the proxy closed at once), close."""
    client = await Client.connect(host, port)
    client.close()
    return client.greeting
