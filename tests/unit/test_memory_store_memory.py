"""The memory store lets go of what was removed: registrations made and removed (or rewritten) within their TTL are
not held until that TTL ends. Before, each stayed in the expiry heap for its whole TTL: 25 000 registrations a
second with a 30 s TTL kept ~750 000 instances alive, and the garbage collector walked them again and again (the
memory backend's benchmark rounds got slower one after another in one process: 37 800, 30 200, 20 900/s)."""

from __future__ import annotations

import gc
import uuid

from discovery import Instance
from discovery.memory import memory_store

CHURN = 5000
#: At most this many leftovers besides the live entries (the store rebuilds its heap past 1 024 + twice the live).
BOUND = 2 * 1024


def _alive(service: str) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Instance) and o.service == service)


def test_removed_registrations_are_not_held_for_their_ttl() -> None:
    store = memory_store(f"churn-{uuid.uuid4().hex}")
    service = f"churn-{uuid.uuid4().hex[:8]}"
    for n in range(CHURN):
        instance = Instance(service, f"i{n}", "127.0.0.1", 80)
        store.put(instance, owner=1, ttl=30)
        store.remove(instance.key, owner=1)
    del instance
    assert store.keys() == frozenset()
    assert _alive(service) < BOUND
    assert store.deadlines_held < BOUND


def test_rewritten_registrations_are_not_held_for_their_ttl() -> None:
    store = memory_store(f"rewrite-{uuid.uuid4().hex}")
    service = f"rewrite-{uuid.uuid4().hex[:8]}"
    for n in range(CHURN):
        store.put(Instance(service, "one", "127.0.0.1", 80, weight=1 + n % 100), owner=1, ttl=30)
    assert len(store.list("default", service)[0]) == 1
    assert _alive(service) < BOUND
    assert store.deadlines_held < BOUND
