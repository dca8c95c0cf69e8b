"""Unit tests of the Consul record layout and URL options (no server needed)."""

from __future__ import annotations

import pytest

from discovery.core.errors import ConfigurationError, ValidationError
from discovery.core.models import Instance, Status
from discovery.core.plugins import create_backend
from discovery.core.urls import parse_url
from discovery.testing.conformance import maximal_instance
from discovery_consul import ConsulBackend, layout, records
from discovery_consul.settings import ConsulSettings

META_KEY_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def live_entry(
    instance: Instance, scope: str | None = None, owner: str | None = None, **check_states: str
) -> dict[str, object]:
    """A ``/v1/health/service`` entry as Consul would return it for an instance we wrote."""
    service_id = layout.consul_service_id(instance, scope)
    status = "passing" if records.status_check_passing(instance.status) else "critical"
    states = {
        "serfHealth": "passing",
        layout.liveness_check_id(service_id, owner): "passing",
        layout.status_check_id(service_id, owner): status,
        **check_states,
    }
    return {
        "Node": {"Node": "n1"},
        "Service": {
            "ID": service_id,
            "Service": instance.service,
            "Tags": [instance.namespace],
            "Address": instance.address,
            "Port": instance.port,
            "Meta": records.instance_meta(instance, scope, owner),
        },
        "Checks": [
            {"CheckID": check_id, "ServiceID": "" if check_id == "serfHealth" else service_id, "Status": state}
            for check_id, state in states.items()
        ],
    }


@pytest.mark.parametrize(
    "key",
    ["app", "app.kubernetes.io/name", "a_b", "a__b", "a_.b", "x/y_z.w-v", "k00.example.org/" + "n" * 46 + "z"],
)
def test_label_keys_escape_reversibly_into_consul_meta_keys(key: str) -> None:
    escaped = records.escape_label_key(key)
    assert set(escaped) <= META_KEY_CHARACTERS
    assert records.unescape_label_key(escaped) == key


def test_worst_label_key_still_fits_a_consul_meta_key() -> None:
    worst = "a" + "._" * 30 + "_a"  # 63 characters, 61 of them escaped
    assert len(worst) == 63
    escaped = records.escape_label_key(worst)
    assert len(escaped) <= records.CONSUL_MAX_META_KEY_LENGTH
    assert records.unescape_label_key(escaped) == worst


def test_malformed_label_escape_is_rejected() -> None:
    with pytest.raises(ValidationError):
        records.unescape_label_key("l-bad_x")


@pytest.mark.parametrize("status", list(Status))
def test_maximal_instance_fits_consul_meta_limits_and_round_trips(status: Status) -> None:
    instance = maximal_instance("max", status)
    meta = records.instance_meta(instance, scope="s" * 63)
    records.check_meta_limits(meta)
    assert len(meta) <= records.CONSUL_MAX_META_KEYS
    assert all(set(key) <= META_KEY_CHARACTERS for key in meta)
    assert not any(key.lower().startswith("consul-") for key in meta)
    entry = live_entry(instance, "s" * 63)
    if status is Status.DRAINING:
        service_id = layout.consul_service_id(instance, "s" * 63)
        entry["Checks"].append(  # type: ignore[attr-defined]
            {"CheckID": layout.maintenance_check_id(service_id), "ServiceID": service_id, "Status": "critical"}
        )
    assert records.instance_from_health_entry(entry) == instance


def test_health_states_map_to_statuses() -> None:
    instance = Instance("web", "w1", "127.0.0.1", 80)
    service_id = layout.consul_service_id(instance)
    liveness, status_check = layout.liveness_check_id(service_id), layout.status_check_id(service_id)
    maintenance = layout.maintenance_check_id(service_id)
    assert records.instance_from_health_entry(live_entry(instance)) == instance
    assert records.instance_from_health_entry(live_entry(instance, **{liveness: "critical"})) is None
    assert records.instance_from_health_entry(live_entry(instance, serfHealth="critical")) is None
    drained = records.instance_from_health_entry(live_entry(instance, **{maintenance: "critical"}))
    assert drained is not None and drained.status is Status.DRAINING
    failed = records.instance_from_health_entry(live_entry(instance, **{status_check: "critical"}))
    assert failed is not None and failed.status is Status.DOWN
    starting = instance.with_changes(status=Status.STARTING)
    assert records.instance_from_health_entry(live_entry(starting)) == starting


@pytest.mark.parametrize(("check_index", "shown"), [(7, Status.DOWN), (8, Status.STARTING), (None, Status.STARTING)])
def test_a_status_note_counts_only_when_written_after_the_service(check_index: int | None, shown: Status) -> None:
    # The owner wrote DOWN (Meta and check synced in one transaction, index 7) while the check's output still
    # notes STARTING (an output-only change syncs minutes later). A check changed after the service (an
    # operator's set-status, index 8) names the status; without indexes the note wins, as before.
    instance = Instance("web", "w1", "127.0.0.1", 80, status=Status.DOWN)
    entry = live_entry(instance)
    service = entry["Service"]
    assert isinstance(service, dict)
    service["ModifyIndex"] = 7 if check_index is not None else None
    status_check_id = layout.status_check_id(layout.consul_service_id(instance))
    for check in entry["Checks"]:  # type: ignore[attr-defined]
        if check["CheckID"] == status_check_id:
            check["Output"] = f"{records.STATUS_CHECK_NOTE_PREFIX}STARTING"
            check["ModifyIndex"] = check_index
    read = records.instance_from_health_entry(entry)
    assert read is not None and read.status is shown


def test_foreign_service_entry_is_rejected() -> None:
    entry = {"Service": {"ID": "redis-1", "Service": "redis", "Meta": {}, "Port": 6379}, "Checks": []}
    with pytest.raises(ValidationError):
        records.instance_from_health_entry(entry)


def test_service_ids_never_collide_across_namespaces_services_and_scopes() -> None:
    ids = {
        layout.consul_service_id(Instance("a", "b-c", "127.0.0.1", 1)),
        layout.consul_service_id(Instance("a-b", "c", "127.0.0.1", 1)),
        layout.consul_service_id(Instance("a", "b-c", "127.0.0.1", 1, namespace="x")),
        layout.consul_service_id(Instance("a", "b-c", "127.0.0.1", 1), scope="default"),
    }
    assert len(ids) == 4


def test_url_options_and_errors() -> None:
    backend = create_backend("consul://10.0.0.1:8501/team?dc=dc2&ttl=4&wait=30&deregister_after=120")
    assert isinstance(backend, ConsulBackend)
    settings = backend.settings
    assert (settings.host, settings.port, settings.scope, settings.dc) == ("10.0.0.1", 8501, "team", "dc2")
    assert (settings.default_ttl, settings.wait, settings.deregister_after) == (4.0, 30.0, 120.0)
    assert backend.detection_bound(2.0) == 3.0
    assert ConsulSettings.from_url(parse_url("consul://")).port == 8500
    for bad in (
        "consul://h:8500?nope=1",
        "consul://h:8500?deregister_after=30",
        "consul://h:8500?ttl=0.5",
        "consul://a:8500,b:8500",
        "consul://user:pw@h:8500",
        "consul://h:8500/a/b",
        "consul://h:8500?dc=",
    ):
        with pytest.raises(ConfigurationError):
            create_backend(bad)


def test_token_never_appears_in_reprs() -> None:
    backend = create_backend("consul://127.0.0.1:8500?token=s3cr3t-t0ken")
    assert isinstance(backend, ConsulBackend)
    assert backend.settings.security.token == "s3cr3t-t0ken"
    for text in (repr(backend), str(backend), repr(backend.settings), repr(backend.settings.security),
                 str(backend.settings.url)):
        assert "s3cr3t-t0ken" not in text


def test_owner_marked_records_are_read_with_their_owners_checks() -> None:
    instance = Instance("web", "w1", "127.0.0.1", 80, status=Status.DOWN)
    service_id = layout.consul_service_id(instance)
    mine, theirs = "a1b2c3d4e5f6", "0a1b2c3d4e5f"
    entry = live_entry(instance, owner=mine)
    assert records.owner_of(entry["Service"]) == mine  # type: ignore[arg-type]
    assert records.instance_from_health_entry(entry) == instance
    # Checks of another owner do not count: without the owner's own liveness check the entry is not alive.
    other = live_entry(instance, owner=mine, **{layout.liveness_check_id(service_id, theirs): "passing"})
    checks: list[dict[str, str]] = other["Checks"]  # type: ignore[assignment]
    other["Checks"] = [c for c in checks if c["CheckID"] != layout.liveness_check_id(service_id, mine)]
    assert records.instance_from_health_entry(other) is None
