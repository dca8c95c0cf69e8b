"""Input hardening with hypothesis: models and URLs fail only with typed errors, secrets never echo in them,
and whatever is accepted is stored only under its own (namespace, service)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery import Instance
from discovery.core.errors import DiscoveryError
from discovery.core.plugins import create_backend
from discovery.core.urls import parse_url
from discovery.memory import memory_store
from discovery_consul import layout
from discovery_etcd.layout import KeyLayout
from discovery_zookeeper.layout import Layout

SECRET = "Sup3r-Secr3t-Valu3"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Mostly-plausible text plus the characters that break paths, keys, ids and URLs.
_NASTY = st.sampled_from(["/", "..", ".", ":", "%2F", "\x00", "\n", "@", "?", "#", "&", "=", "[", "]", " ", "*", "é"])
_text = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="ascii"), max_size=80),
    st.lists(st.one_of(_NASTY, st.text(alphabet="abc-1._", min_size=1, max_size=6)), max_size=10).map("".join),
)
_labels = st.dictionaries(_text, _text, max_size=4)


def _instance_or_error(**fields: Any) -> Instance | None:
    try:
        return Instance(**fields)
    except DiscoveryError:
        return None


@FUZZ
@given(
    service=_text, instance_id=_text, address=_text, port=st.one_of(st.integers(), st.text(max_size=5)),
    namespace=_text, labels=_labels, zone=st.one_of(st.none(), _text),
    weight=st.one_of(st.integers(-5, 300), st.floats(allow_nan=True)),
)
def test_instances_are_valid_or_a_typed_error(
    service: str, instance_id: str, address: str, port: Any, namespace: str, labels: dict[str, str],
    zone: str | None, weight: Any,
) -> None:
    instance = _instance_or_error(
        service=service, id=instance_id, address=address, port=port, namespace=namespace, labels=labels,
        zone=zone, weight=weight,
    )
    if instance is None:
        return
    # Accepted: every backend's key for it stays inside the service's own directory.
    for name in (instance.service, instance.namespace, instance.id):
        assert "/" not in name and ":" not in name and name not in (".", "..")
    zk = Layout("/root")
    assert zk.instance_path(instance) == f"{zk.service_path(instance.namespace, instance.service)}/{instance.id}"
    etcd = KeyLayout("/prefix")
    key = etcd.instance_key(instance.namespace, instance.service, instance.id)
    assert key.startswith(etcd.service_prefix(instance.namespace, instance.service))
    assert etcd.parse(key) == (instance.namespace, instance.service, instance.id)
    assert layout.consul_service_id(instance, "scope").split(":") == [
        "scope", instance.namespace, instance.service, instance.id,
    ]


_instances = st.builds(
    lambda s, i, n, labels: _instance_or_error(
        service=s, id=i, address="127.0.0.1", port=1, namespace=n, labels=labels
    ),
    st.one_of(_text, st.sampled_from(["orders", "billing"])),
    st.one_of(_text, st.sampled_from(["a-1", "b.2", "_x"])),
    st.one_of(_text, st.sampled_from(["default", "prod"])),
    _labels,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_instances, max_size=6))
def test_memory_store_holds_only_keys_of_registered_services(candidates: list[Instance | None]) -> None:
    store_name = f"fuzz-{uuid.uuid4().hex}"

    async def scenario() -> None:
        backend = create_backend(f"memory:///{store_name}")
        await backend.start()
        accepted = [instance for instance in candidates if instance is not None]
        try:
            for instance in accepted:
                await backend.register(instance, 5.0, lambda *_: None)
            for instance in accepted:
                listed = await backend.list(instance.namespace, instance.service)
                assert all((i.namespace, i.service) == (instance.namespace, instance.service) for i in listed)
            store = memory_store(store_name)
            assert store.keys() == {instance.key for instance in accepted}
        finally:
            await backend.close()

    asyncio.run(scenario())


_schemes = st.sampled_from(["zookeeper", "etcd", "consul", "memory", "ZooKeeper", "nope", ""])
_secret_params = st.sampled_from(
    [f"password={SECRET}", f"token={SECRET}", f"username=u&password={SECRET}", f"secret={SECRET}"]
)


@FUZZ
@given(scheme=_schemes, middle=_text, path=_text, query=_text, secret=_secret_params, userinfo=st.booleans())
def test_urls_are_parsed_or_a_typed_error_that_hides_secrets(
    scheme: str, middle: str, path: str, query: str, secret: str, userinfo: bool
) -> None:
    credentials = f"user:{SECRET}@" if userinfo else ""
    raw = f"{scheme}://{credentials}{middle}/{path}?{secret}&{query}"
    try:
        backend = create_backend(raw)
    except DiscoveryError as error:
        assert SECRET not in str(error), str(error)
        assert SECRET not in repr(error)
        return
    assert SECRET not in repr(backend)
    for attribute in ("config", "_settings"):
        assert SECRET not in repr(getattr(backend, attribute, ""))
    assert SECRET not in str(parse_url(raw)) and SECRET not in repr(parse_url(raw))


@FUZZ
@given(raw=st.one_of(st.text(max_size=120), st.binary(max_size=40).map(lambda b: b.decode("latin-1"))))
def test_any_text_is_a_url_or_a_typed_error(raw: str) -> None:
    with contextlib.suppress(DiscoveryError):
        create_backend(raw)
