"""Findings 5 and 14 (definitions), on the memory backend and every real one.

Before the fix one stored definition of deeply nested JSON raised ``RecursionError`` while decoding, which killed
the catalog's follow task for good (the proxy and DNS kept serving a frozen set) and made every ``apply`` fail;
and the backends' definition calls took any namespace and name, so ``..`` or ``/`` reached ZooKeeper paths,
etcd keys and Consul KV keys.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest

from discovery import AsyncRegistry, ValidationError
from discovery.services import Service, ServiceCatalog, ServicePort, ServiceStore, decode_service
from discovery.testing.conformance import definitions_of
from tests.services.conftest import BACKENDS, isolated_url, private_ranges


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    if request.param != "memory":
        request.applymarker(pytest.mark.servers)
    return isolated_url(str(request.param), request, f"poison-{uuid.uuid4().hex[:12]}", ttl=2, memory_ttl=1,
                        consul_ttl=2)


@pytest.fixture
async def registry(backend_url: str) -> AsyncIterator[AsyncRegistry]:
    async with AsyncRegistry.connect(backend_url) as connected:
        yield connected


def web(name: str) -> Service:
    return Service(name, selector={"app": name}, ports=(ServicePort(80),))


async def test_a_poisoned_definition_is_skipped_and_following_goes_on(registry: AsyncRegistry,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    store = ServiceStore(registry.backend, private_ranges())
    catalog = ServiceCatalog(registry, store, rescan_interval=0.2)
    await store.apply(web("before"))
    await catalog.start()
    try:
        poison = b"[" * 100_000 + b"]" * 100_000  # 200 KB: fits every backend's value limit
        await definitions_of(registry).put("services", "default", "deep", poison)
        await definitions_of(registry).put("services", "default", "wide", b"{\"a\": " + b"7" * 50_000 + b"}")
        after = await store.apply(web("after"))  # apply reads (and decodes) every stored definition
        await catalog.wait_until(lambda c: c.service("default", "after") == after.service, 15)
        assert [s.name for s in catalog.services] == ["after", "before"]
        assert not catalog.stale
        assert [s.name for s in await store.list()] == ["after", "before"]
    finally:
        await catalog.close()
    skipped = [r.getMessage() for r in caplog.records if "skipping stored Service default/deep" in r.getMessage()]
    assert skipped and all(len(message) < 400 for message in skipped)


async def test_an_oversized_definition_is_refused_at_write(memory_url: str) -> None:
    async with AsyncRegistry.connect(memory_url) as registry:
        definitions = registry.backend.definitions
        assert definitions is not None
        with pytest.raises(ValidationError):
            await definitions.put("services", "default", "big", b" " * (2 * 1024 * 1024) + b"{}")
        assert await ServiceStore(registry.backend, private_ranges()).list() == ()


def test_an_oversized_stored_definition_is_refused_before_decoding() -> None:
    """A foreign writer can put a larger value under our keys; it is refused by size before any parsing."""
    with pytest.raises(ValidationError, match="at most"):
        decode_service(b" " * (2 * 1024 * 1024) + b"{}")


@pytest.mark.parametrize(("namespace", "name"), [("..", "x"), ("default", "../x"), ("a/b", "x"), ("default", ""),
                                                 ("default", "x\0y"), ("default", "X" * 64), ("Default", "x")])
async def test_definition_keys_are_validated_by_every_backend(registry: AsyncRegistry, namespace: str,
                                                              name: str) -> None:
    backend = definitions_of(registry)
    with pytest.raises(ValidationError):
        await backend.put("services", namespace, name, b"{}")
    with pytest.raises(ValidationError):
        await backend.get("services", namespace, name)
    with pytest.raises(ValidationError):
        await backend.delete("services", namespace, name)
    if "/" in namespace or namespace != namespace.lower():
        with pytest.raises(ValidationError):
            await backend.list("services", namespace)
    assert await backend.list("services") == (), "nothing was written"


def test_a_log_line_about_a_poisoned_definition_is_short(caplog: pytest.LogCaptureFixture) -> None:
    from discovery.core.definitions import StoredDefinition
    from discovery.services.store import decode_stored

    caplog.set_level(logging.WARNING)
    huge_kind = b'{"apiVersion": "v1", "kind": "' + b"K" * 500_000 + b'"}'
    assert decode_stored((StoredDefinition("services", "default", "k", huge_kind),)) == ()
    [record] = caplog.records
    assert len(record.getMessage()) < 400
