"""Snapshot: ordering and the cheap re-stamp the watch fan-out uses."""

from __future__ import annotations

from discovery.core.models import Instance, Snapshot


def _instances() -> list[Instance]:
    return [Instance("api", f"i{n}", "127.0.0.1", 8000 + n) for n in (3, 1, 2)]


def test_instances_are_kept_sorted_by_id() -> None:
    snapshot = Snapshot("api", "default", tuple(_instances()), revision=4)
    assert [i.id for i in snapshot] == ["i1", "i2", "i3"]


def test_with_revision_changes_only_revision_and_stale() -> None:
    snapshot = Snapshot("api", "default", tuple(_instances()), revision=4)
    stamped = snapshot.with_revision(9)
    assert (stamped.revision, stamped.stale) == (9, False)
    assert stamped.instances is snapshot.instances  # shared, not re-sorted
    assert stamped == Snapshot("api", "default", tuple(_instances()), revision=9)
    marked = stamped.with_revision(10, stale=True)
    assert (marked.revision, marked.stale, marked.service, marked.namespace) == (10, True, "api", "default")
    assert marked.with_revision(11).stale  # stale is kept unless given


def test_get_finds_an_instance_by_id_in_a_large_snapshot() -> None:
    snapshot = Snapshot("web", "default", tuple(Instance("web", f"w{n:05d}", "127.0.0.1", 80) for n in range(2000)))
    assert snapshot.get("w01234") is snapshot.instances[1234]
    assert snapshot.get("w02000") is None and snapshot.get("a") is None and snapshot.get("z") is None
