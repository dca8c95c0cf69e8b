"""Every adapter's ``watch()`` is a plain stream of its own: no sharing between calls, and ``close()`` ends it.

The registry's watch hub is the one place that shares a backend watch among subscribers
(docs/decisions/watch-fan-out.md); these are the adapter-side halves of that decision.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from discovery.core.backend import Backend
from discovery.core.errors import ClosedError
from discovery.core.models import Instance, Snapshot
from discovery.core.plugins import create_backend
from tests.backends.zookeeper_support import backend_url as zookeeper_url
from tests.harness import ServerHandle

pytestmark = [pytest.mark.servers, pytest.mark.asyncio]

KINDS = ("zookeeper", "etcd", "consul")
#: Generous: a stream may be in a reconnect backoff (etcd: up to 2 s, Consul: up to 5 s) when the backend closes.
ENDS_WITHIN = 15.0
CONVERGENCE = 20.0


def _url(kind: str, server: ServerHandle) -> str:
    private = f"streams-{uuid.uuid4().hex[:12]}"
    if kind == "zookeeper":
        return zookeeper_url(server, private)
    return f"{server.url}/{private}?ttl=10&timeout=5"


async def _started(url: str) -> Backend:
    backend = create_backend(url)
    await backend.start()
    return backend


async def _next(stream: AsyncIterator[Snapshot], timeout: float = CONVERGENCE) -> Snapshot:
    return await asyncio.wait_for(anext(stream), timeout)


async def _until_member(stream: AsyncIterator[Snapshot], ident: str) -> Snapshot:
    async with asyncio.timeout(CONVERGENCE):
        while True:
            snapshot = await anext(stream)
            if ident in snapshot.ids():
                return snapshot


@pytest.mark.parametrize("kind", KINDS)
async def test_closing_the_backend_ends_an_open_watch_stream(kind: str, request: pytest.FixtureRequest) -> None:
    server: ServerHandle = request.getfixturevalue(f"{kind}_server")
    backend = await _started(_url(kind, server))
    stream = backend.watch("default", "closing")
    try:
        assert (await _next(stream)).ids() == set()
        waiting = asyncio.ensure_future(anext(stream))  # parked on the server, waiting for a change
        await asyncio.sleep(0.2)
        assert not waiting.done()
    finally:
        await backend.close()
    # etcd's stream raises ClosedError, the others end; neither may keep retrying a closed backend.
    with pytest.raises((StopAsyncIteration, ClosedError)):
        await asyncio.wait_for(waiting, ENDS_WITHIN)


@pytest.mark.parametrize("kind", KINDS)
async def test_each_watch_call_is_a_stream_of_its_own(kind: str, request: pytest.FixtureRequest) -> None:
    server: ServerHandle = request.getfixturevalue(f"{kind}_server")
    url = _url(kind, server)
    watcher, writer = await _started(url), await _started(url)
    first, second = watcher.watch("default", "own"), watcher.watch("default", "own")
    try:
        assert first is not second
        await _next(first)
        await _next(second)
        await first.aclose()  # type: ignore[attr-defined]
        with pytest.raises(StopAsyncIteration):
            await _next(first)
        await writer.register(Instance("own", "own-1", "127.0.0.1", 9000), 10.0, lambda state: None)
        assert (await _until_member(second, "own-1")).ids() == {"own-1"}
    finally:
        await second.aclose()  # type: ignore[attr-defined]
        await watcher.close()
        await writer.close()
