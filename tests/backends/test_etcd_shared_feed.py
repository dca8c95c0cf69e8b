"""etcd: what a namespace watch hands a service stream is applied in etcd's order (no server: a stream listed and fed
by hand, as :class:`discovery_etcd.watch.NamespaceStream` feeds it)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from discovery.core.models import Instance
from discovery_etcd.layout import KeyLayout
from discovery_etcd.records import encode_endpoint
from discovery_etcd.watch import ServiceWatch, StreamProbe

LAYOUT = KeyLayout("/shared-feed")
LISTED_AT = 4


class _SharingLister:
    """Lists nothing at revision 4 and attaches the stream to a namespace watch, as a namespace read does."""

    def __init__(self) -> None:
        self.detached: list[ServiceWatch] = []

    async def read(self, namespace: str, service: str, sharer: ServiceWatch | None = None) -> tuple[list[Any], int]:
        assert sharer is not None, "a stream's first list may share a namespace watch"
        sharer.share(SimpleNamespace(detach=lambda stream, _service: self.detached.append(stream)))  # type: ignore[arg-type]
        return [], LISTED_AT


def _put(instance: Instance, revision: int) -> Any:
    key = LAYOUT.instance_key(instance.namespace, instance.service, instance.id)
    return SimpleNamespace(type=0, kv=SimpleNamespace(key=key, value=encode_endpoint(instance), mod_revision=revision))


async def _listed_stream() -> tuple[ServiceWatch, _SharingLister]:
    lister = _SharingLister()
    stream = ServiceWatch(
        None, LAYOUT, "default", "api", lambda: False, StreamProbe(5.0), lister  # type: ignore[arg-type]
    )
    first = await anext(stream)
    assert (first.ids(), first.revision) == (frozenset(), LISTED_AT)
    return stream, lister


async def test_a_progress_notification_behind_waiting_events_does_not_skip_them() -> None:
    stream, lister = await _listed_stream()
    stream.fed_events([_put(Instance("api", "a", "127.0.0.1", 9000), 5)])
    stream.fed_progress(7)  # etcd's progress covers revision 5, which the stream has not read yet
    async with asyncio.timeout(2):
        shown = await anext(stream)
    assert shown.ids() == {"a"}
    await stream.aclose()
    assert lister.detached == [stream], "a closed stream leaves its namespace watch"


async def test_a_progress_notification_with_nothing_waiting_is_applied_at_once() -> None:
    stream, _ = await _listed_stream()
    stream.fed_progress(9)
    assert stream.revision == 9
    stream.fed_events([_put(Instance("api", "b", "127.0.0.1", 9001), 8)])  # already covered by revision 9: skipped
    stream.fed_events([_put(Instance("api", "c", "127.0.0.1", 9002), 10)])
    async with asyncio.timeout(2):
        shown = await anext(stream)
    assert (shown.ids(), shown.revision) == (frozenset({"c"}), 10)
    await stream.aclose()
