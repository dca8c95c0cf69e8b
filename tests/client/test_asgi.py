"""The ASGI lifespan helper, driven through the ASGI protocol by hand (no web framework needed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from discovery import AsyncRegistry, Instance, Status
from discovery.client.asgi import ServiceLifespan
from tests.client.polling import wait_until_async

INSTANCE = Instance("orders", "orders-1", "127.0.0.1", 8080)
Message = dict[str, Any]


class LifespanDriver:
    """Plays the server's side of the ASGI lifespan protocol."""

    def __init__(self, app: Any) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task = asyncio.create_task(
            app({"type": "lifespan", "asgi": {"version": "3.0"}}, self.inbox.get, self._send)
        )

    async def _send(self, message: Any) -> None:
        await self.outbox.put(message)

    async def event(self, kind: str) -> str:
        await self.inbox.put({"type": f"lifespan.{kind}"})
        reply = await asyncio.wait_for(self.outbox.get(), 15)
        return str(reply["type"])


class App:
    """A plain ASGI app that supports lifespan and holds each HTTP request until released."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.release = asyncio.Event()
        self.request_started = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.events.append("app startup")
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.events.append("app shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        else:
            self.request_started.set()
            await self.release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


async def statuses(observer: AsyncRegistry) -> list[Status]:
    return [i.status for i in await observer.instances("orders", statuses=None)]


async def test_wrap_registers_after_startup_and_drains_in_flight_requests_before_shutdown(memory_url: str) -> None:
    app = App()
    service = ServiceLifespan(INSTANCE, url=memory_url, settle=0, drain_timeout=15)
    wrapped = service.wrap(app)
    async with AsyncRegistry.connect(memory_url) as observer:
        driver = LifespanDriver(wrapped)
        assert await driver.event("startup") == "lifespan.startup.complete"
        assert app.events == ["app startup"]
        assert await statuses(observer) == [Status.UP]

        sent: list[Any] = []

        async def http_send(message: Any) -> None:
            sent.append(message)

        async def http_receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        request = asyncio.create_task(wrapped({"type": "http", "path": "/"}, http_receive, http_send))
        await asyncio.wait_for(app.request_started.wait(), 5)
        assert service.in_flight == 1

        shutdown = asyncio.create_task(driver.event("shutdown"))
        registration = service.registration
        assert registration is not None
        await wait_until_async(lambda: registration.instance.status is Status.DRAINING, 5)
        assert await statuses(observer) == [Status.DRAINING]  # still registered while a request is in flight
        assert not shutdown.done() and app.events == ["app startup"]

        app.release.set()
        await request
        assert await asyncio.wait_for(shutdown, 15) == "lifespan.shutdown.complete"
        assert app.events == ["app startup", "app shutdown"]
        assert await statuses(observer) == []
        assert service.in_flight == 0
        assert service.registry is None
        await driver.task


async def test_an_app_without_lifespan_and_a_startup_failure(memory_url: str) -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not see lifespan events")

    closed = AsyncRegistry.connect(memory_url)
    registry = await closed
    await registry.close()
    failing = LifespanDriver(ServiceLifespan(INSTANCE, registry=registry).wrap(bare, app_lifespan=False))
    assert await failing.event("startup") == "lifespan.startup.failed"
    await failing.task

    service = ServiceLifespan(INSTANCE, url=memory_url, settle=0, drain_timeout=1)
    driver = LifespanDriver(service.wrap(bare, app_lifespan=False))
    assert await driver.event("startup") == "lifespan.startup.complete"
    assert service.registration is not None and service.registration.active
    assert await driver.event("shutdown") == "lifespan.shutdown.complete"
    await driver.task


async def test_the_starlette_lifespan_form_with_a_shared_registry(memory_url: str) -> None:
    async with AsyncRegistry.connect(memory_url) as registry:
        service = ServiceLifespan(INSTANCE, registry=registry, settle=0, drain_timeout=0.1)
        async with service(object()):
            assert [i.id for i in await registry.instances("orders")] == ["orders-1"]
        assert await registry.instances("orders", statuses=None) == ()
        assert not registry.closed  # a registry it was given is not its to close


@pytest.mark.parametrize("healthy", [True, False])
async def test_the_health_check_runs_while_the_app_lives(memory_url: str, healthy: bool) -> None:
    async with AsyncRegistry.connect(memory_url) as registry:
        service = ServiceLifespan(
            INSTANCE, registry=registry, settle=0, drain_timeout=0.1, health_check=lambda: healthy, health_interval=0.02
        )
        async with service(object()):
            want = Status.UP if healthy else Status.DOWN
            await wait_until_async(
                lambda: service.registration is not None and service.registration.instance.status is want, 5
            )
