"""A minimal ASGI app for the uvicorn drain test, run by ``python -m uvicorn tests.client.uvicorn_app:app``.

``GET /slow`` answers after ``SLOW_SECONDS``; ``GET /busy`` says how many /slow requests are in flight. The
instance (service ``drainy``, id ``drainy-1``) registers at ``DISCOVERY_URL`` with the port from ``APP_PORT``.
``DRAIN_ON_SIGNAL=0`` turns the signal hook off, to show uvicorn's own order.
"""

from __future__ import annotations

import asyncio
import os

from discovery import Instance
from discovery.client.asgi import Message, Receive, Scope, Send, ServiceLifespan

SLOW_SECONDS = float(os.environ.get("SLOW_SECONDS", "3"))
busy = 0


async def inner(scope: Scope, receive: Receive, send: Send) -> None:
    global busy
    assert scope["type"] == "http"
    if scope["path"] == "/slow":
        busy += 1
        try:
            await asyncio.sleep(SLOW_SECONDS)
        finally:
            busy -= 1
        body = b"done"
    else:
        body = str(busy).encode()
    start: Message = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    await send(start)
    await send({"type": "http.response.body", "body": body})


service = ServiceLifespan(
    Instance("drainy", "drainy-1", "127.0.0.1", int(os.environ["APP_PORT"])),
    url=os.environ["DISCOVERY_URL"],
    settle=float(os.environ.get("SETTLE", "1.5")),
    drain_timeout=20,
    drain_on_signal=os.environ.get("DRAIN_ON_SIGNAL", "1") == "1",
)
app = service.wrap(inner, app_lifespan=False)
