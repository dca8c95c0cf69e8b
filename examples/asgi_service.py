"""A service that registers itself while it runs and drains on shutdown, and a client that calls it by name.

With FastAPI or Starlette, hand the helper to ``lifespan=``::

    from fastapi import FastAPI
    service = ServiceLifespan(Instance("greeter", "greeter-1", "10.1.2.3", 8000), url="etcd://127.0.0.1:2379")
    app = FastAPI(lifespan=service)

Any ASGI app (this file uses a plain one, so it needs no web framework) can be wrapped instead, which also
counts requests in flight so the drain ends as soon as the last one finished::

    app = ServiceLifespan(instance, url=...).wrap(app)

Run ``uvicorn examples.asgi_service:app`` to serve it for real (``DISCOVERY_URL`` picks the backend), or
``python examples/asgi_service.py`` for an in-process demo: the app's lifespan is driven by hand, and an
httpx client with ``AsyncDiscoveryTransport`` resolves ``http://greeter/`` through the registry (the wrapped
``httpx.ASGITransport`` delivers the request to the app in this process instead of over the network).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from discovery import Instance
from discovery.client.asgi import ServiceLifespan
from discovery.client.httpx_transport import AsyncDiscoveryTransport

INSTANCE = Instance("greeter", "greeter-1", "127.0.0.1", 8000, labels={"app": "greeter"})


async def greeter(scope: Any, receive: Any, send: Any) -> None:
    """A plain ASGI app without lifespan support: says hello."""
    assert scope["type"] == "http"
    body = f"hello from {INSTANCE.id}, you asked for {scope['path']}\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


service = ServiceLifespan(INSTANCE, drain_timeout=5.0, settle=0.5)
app = service.wrap(greeter, app_lifespan=False)


async def _lifespan_event(inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any], kind: str) -> str:
    await inbox.put({"type": f"lifespan.{kind}"})
    return str((await outbox.get())["type"])


async def demo() -> None:
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    server = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))
    print("server:", await _lifespan_event(inbox, outbox, "startup"))
    registry = service.registry
    assert registry is not None
    print("registered:", [i.id for i in await registry.instances("greeter")])

    transport = AsyncDiscoveryTransport(registry, transport=httpx.ASGITransport(app=app))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("http://greeter/hello")
        print("client:", response.status_code, response.text.strip())

    print("server:", await _lifespan_event(inbox, outbox, "shutdown"), "(drained, deregistered)")
    await server


if __name__ == "__main__":
    asyncio.run(demo())
