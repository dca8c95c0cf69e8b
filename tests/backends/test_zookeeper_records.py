"""The Curator ServiceInstance record and the URL, without a server."""

from __future__ import annotations

import json

import pytest

from discovery.core.errors import ConfigurationError, ValidationError
from discovery.core.models import Instance, Status
from discovery.core.plugins import create_backend
from discovery.core.urls import parse_url
from discovery_zookeeper import ZooKeeperBackend
from discovery_zookeeper.records import decode_record, encode_record, status_from_spring, status_to_spring
from discovery_zookeeper.settings import SPRING_PAYLOAD_CLASS, ZooKeeperConfig

FULL = Instance(
    "orders", "o-1", "host.example.org", 8080, namespace="shop", labels={"team": "a", "instance_status": "x"},
    ports={"grpc": 9090}, status=Status.DRAINING, weight=5, zone="z1",
)


def _decode(raw: bytes | str, node: str = "o-1") -> Instance:
    data = raw.encode() if isinstance(raw, str) else raw
    return decode_record(data, namespace="shop", service="orders", node_name=node)


def test_record_has_curator_fields_and_round_trips() -> None:
    raw = encode_record(FULL, payload_class=SPRING_PAYLOAD_CLASS, registered_at_ms=1234)
    record = json.loads(raw)
    assert {k: record[k] for k in ("name", "id", "address", "port", "sslPort", "registrationTimeUTC",
                                   "serviceType", "uriSpec")} == {
        "name": "orders", "id": "o-1", "address": "host.example.org", "port": 8080, "sslPort": None,
        "registrationTimeUTC": 1234, "serviceType": "DYNAMIC", "uriSpec": None,
    }
    payload = record["payload"]
    assert payload["@class"] == SPRING_PAYLOAD_CLASS
    assert payload["metadata"] == {"team": "a", "instance_status": "OUT_OF_SERVICE"}
    assert _decode(raw) == FULL


def test_no_payload_class_when_disabled() -> None:
    assert "@class" not in json.loads(encode_record(FULL, payload_class=None))["payload"]


@pytest.mark.parametrize("status", list(Status))
def test_status_maps_to_spring_and_back(status: Status) -> None:
    assert status_from_spring(status_to_spring(status)) is status


def test_spring_status_words() -> None:
    assert status_from_spring(None) is Status.UP
    assert status_from_spring("OUT_OF_SERVICE") is Status.DRAINING
    assert status_from_spring("UNKNOWN") is Status.DOWN
    assert status_from_spring("whatever") is Status.DOWN


def test_spring_tool_changing_instance_status_wins_over_our_copy() -> None:
    record = json.loads(encode_record(FULL.with_changes(status=Status.UP), payload_class=None))
    record["payload"]["metadata"]["instance_status"] = "OUT_OF_SERVICE"
    assert _decode(json.dumps(record)).status is Status.DRAINING


def test_foreign_spring_record_with_unknown_fields() -> None:
    raw = json.dumps({
        "name": "orders", "id": "ignored-top-level-id", "address": "10.0.0.5", "port": 8080, "sslPort": None,
        "payload": {"@class": SPRING_PAYLOAD_CLASS, "id": "orders", "name": "orders",
                    "metadata": {"instance_status": "STARTING", "zone": "eu", "bad key": "v", "n": 1}},
        "registrationTimeUTC": 1, "serviceType": "DYNAMIC", "enabled": True, "futureField": {"x": 1},
        "uriSpec": {"parts": [{"value": "scheme", "variable": True}]},
    })
    found = _decode(raw, node="abc-123")
    assert (found.id, found.address, found.port, found.namespace) == ("abc-123", "10.0.0.5", 8080, "shop")
    assert found.status is Status.STARTING
    assert found.labels == {"zone": "eu"}


def test_foreign_record_with_ssl_port_only_and_no_payload() -> None:
    found = _decode('{"name":"orders","id":"x","address":"10.0.0.5","port":null,"sslPort":8443}', node="x")
    assert found.port == 8443 and found.status is Status.UP


@pytest.mark.parametrize("raw", ["not json", "[]", '{"address": "10.0.0.1"}', '{"address": "bad host", "port": 1}'])
def test_unusable_records_raise_validation_error(raw: str) -> None:
    with pytest.raises(ValidationError):
        _decode(raw)


def test_url_parameters() -> None:
    config = ZooKeeperConfig.from_url(parse_url("zookeeper://h1:2181,h2/base/dir/?session_timeout=4&tick=0.5"))
    assert config.hosts == "h1:2181,h2:2181"
    assert config.root == "/base/dir"
    assert (config.session_timeout, config.tick, config.request_timeout) == (4.0, 0.5, 4.0)
    assert config.payload_class == SPRING_PAYLOAD_CLASS
    defaults = ZooKeeperConfig.from_url(parse_url("zookeeper://"))
    assert (defaults.hosts, defaults.root, defaults.session_timeout) == ("127.0.0.1:2181", "/discovery", 10.0)
    assert ZooKeeperConfig.from_url(parse_url("zookeeper://h/?payload_class=")).payload_class is None


@pytest.mark.parametrize("url", [
    "zookeeper://h/?nope=1", "zookeeper://h/?session_timeout=x", "zookeeper://h/?session_timeout=0",
    "zookeeper://h/zookeeper", "zookeeper://h/a/../b", "zookeeper://u:p@h/",
])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        create_backend(url)


def test_capabilities_follow_session_timeout() -> None:
    backend = create_backend("zookeeper://h/?session_timeout=3&tick=0.5")
    assert isinstance(backend, ZooKeeperBackend)
    caps = backend.capabilities
    assert (caps.default_ttl, caps.min_ttl, caps.detection_slack, caps.ttl_per_registration) == (3.0, 3.0, 0.5, False)
    assert backend.effective_ttl(30) == 3.0
    assert backend.detection_bound(30) == 3.5


SERVERSET_MEMBER = {  # what Finagle's / Aurora's ServerSet writes into member_0000000042
    "serviceEndpoint": {"host": "10.1.2.3", "port": 31337},
    "additionalEndpoints": {
        "http": {"host": "10.1.2.3", "port": 31337},
        "admin": {"host": "10.1.2.3", "port": 9990},
        "aurora": {"host": "other-host", "port": 1},
        "Not_A_Port_Name": {"host": "10.1.2.3", "port": 2},
    },
    "status": "ALIVE",
    "shard": 3,
}


def test_serverset_member_is_an_instance() -> None:
    instance = _decode(json.dumps(SERVERSET_MEMBER), node="member_0000000042")
    assert instance == Instance(
        "orders", "member_0000000042", "10.1.2.3", 31337, namespace="shop", labels={"shard": "3"},
        ports={"http": 31337, "admin": 9990},
    )


@pytest.mark.parametrize(
    ("status", "ours"),
    [("ALIVE", Status.UP), ("WARNING", Status.UP), ("STARTING", Status.STARTING), ("STOPPING", Status.DRAINING),
     ("STOPPED", Status.DOWN), ("DEAD", Status.DOWN), ("whatever", Status.DOWN), (None, Status.UP)],
)
def test_serverset_status(status: str | None, ours: Status) -> None:
    member = {"serviceEndpoint": {"host": "h1", "port": 1}, "status": status}
    assert _decode(json.dumps(member), node="member_1").status == ours


def test_serverset_without_a_usable_endpoint_is_rejected() -> None:
    for bad in ({"serviceEndpoint": "x"}, {"serviceEndpoint": {"host": "h"}}, {"serviceEndpoint": {"port": 1}}):
        with pytest.raises(ValidationError):
            _decode(json.dumps(bad), node="member_1")


def test_foreign_node_names_that_are_no_valid_id_are_escaped() -> None:
    raw = json.dumps({"name": "orders", "address": "10.0.0.1", "port": 80, "payload": None})
    assert _decode(raw, node="10.0.0.1:80").id == "10.0.0.1_x3a80"
