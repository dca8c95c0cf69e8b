"""Fuzzing the parsers that face other people (hypothesis): manifests, stored definitions and DNS packets.

Whatever the input - random text and bytes, or structured-hostile documents and packets (aliases, deep nesting,
huge scalars, wrong types, mutated headers, bad labels, odd EDNS) - the outcome is a value or a typed
``DiscoveryError`` (for DNS: a reply or ``None``, never an exception), in bounded time and memory, and no error
message quotes more than a clipped piece of the input.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any

import dns.flags
import dns.message
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery import AsyncRegistry, Instance
from discovery.core.errors import DiscoveryError
from discovery.services import (
    HEADLESS,
    Service,
    ServiceCatalog,
    ServicePort,
    ServiceStore,
    decode_service,
    encode_service,
    parse_manifests,
)
from discovery.services.dns import DnsServer
from tests.services.conftest import private_ranges

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])
MAX_SECONDS = 2.0
MAX_PEAK_BYTES = 20 * 1024 * 1024
MAX_MESSAGE = 2000
MAX_UDP_ANSWER = 1232

FIELDS = ["apiVersion", "kind", "metadata", "spec", "name", "namespace", "labels", "annotations", "selector",
          "ports", "port", "targetPort", "nodePort", "protocol", "type", "clusterIP", "externalIPs",
          "loadBalancerIP", "externalName", "items", "status", "sessionAffinity"]
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40),
    st.sampled_from(["v1", "Service", "List", "None", "TCP", "UDP", "ClusterIP", "NodePort", "LoadBalancer",
                     "ExternalName", "0.0.0.0", "::", "127.10.0.5", "fe80::1%\x1b[31m", "", "-", "a" * 300]),
)
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), children,
                                               max_size=6)),
    max_leaves=40,
)


def measured(work: Any) -> tuple[Any, float, int]:
    """Run ``work()``; its outcome (value or DiscoveryError), CPU seconds and peak traced memory."""
    tracemalloc.start()
    started = time.process_time()
    try:
        outcome = work()
    except DiscoveryError as error:
        outcome = error
    finally:
        seconds = time.process_time() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return outcome, seconds, peak


def check_bounded(outcome: Any, seconds: float, peak: int) -> None:
    assert seconds < MAX_SECONDS, seconds
    assert peak < MAX_PEAK_BYTES, peak
    if isinstance(outcome, DiscoveryError):
        assert len(str(outcome)) < MAX_MESSAGE, str(outcome)[:300]


def check_manifest_outcome(outcome: Any) -> None:
    if isinstance(outcome, DiscoveryError):
        return
    for loaded in outcome:  # accepted: a valid Service that survives the stored form unchanged
        assert isinstance(loaded.service, Service)
        assert decode_service(encode_service(loaded.service)) == loaded.service


@FUZZ
@given(text=st.one_of(st.text(max_size=2000), st.binary(max_size=2000).map(lambda b: b.decode("latin-1"))))
def test_random_text_is_a_manifest_or_a_typed_error(text: str) -> None:
    outcome, seconds, peak = measured(lambda: parse_manifests(text))
    check_bounded(outcome, seconds, peak)
    check_manifest_outcome(outcome)


def hostile_yaml(document: Any, depth: int, laughs: int, big: int) -> str:
    text = yaml.safe_dump(document, default_flow_style=None)
    if depth:
        text += f"deep: {'[' * depth}{']' * depth}\n"
    if laughs:
        text = 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
            f"a{n}: &a{n} [{','.join([f'*a{n - 1}'] * 9)}]\n" for n in range(1, laughs)) + text.replace(
            "kind: Service", f"kind: *a{laughs - 1}")
    if big:
        text += f"huge: {'9' * big}\n"
    return text


@FUZZ
@given(document=_documents, depth=st.sampled_from([0, 0, 40, 2000]), laughs=st.sampled_from([0, 0, 3, 9]),
       big=st.sampled_from([0, 0, 5000]), valid_base=st.booleans())
def test_structured_hostile_manifests_are_typed_errors_in_bounded_time(document: Any, depth: int, laughs: int,
                                                                       big: int, valid_base: bool) -> None:
    if valid_base:  # a real Service with one hostile part grafted on
        base: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
        base["spec"]["ports"][0]["targetPort" if isinstance(document, str | int) else "name"] = document
        document = base
    text = hostile_yaml(document, depth, laughs, big)
    outcome, seconds, peak = measured(lambda: parse_manifests(text))
    check_bounded(outcome, seconds, peak)
    check_manifest_outcome(outcome)
    if laughs or depth > 32 or big:
        assert isinstance(outcome, DiscoveryError)


@FUZZ
@given(data=st.one_of(st.binary(max_size=3000), _documents.map(lambda d: json.dumps(d).encode()),
                      st.integers(1, 50_000).map(lambda n: b"[" * n + b"]" * n)))
def test_stored_definitions_decode_or_are_typed_errors(data: bytes) -> None:
    outcome, seconds, peak = measured(lambda: decode_service(data))
    check_bounded(outcome, seconds, peak)
    assert isinstance(outcome, Service | DiscoveryError)


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    """A responder over a catalog with ordinary, headless, scoped and large Services (read after set-up)."""

    async def build() -> DnsServer:
        async with AsyncRegistry.connect(f"memory:///fuzz-{uuid.uuid4().hex[:8]}?ttl=300") as registry:
            store = ServiceStore(registry.backend, private_ranges())
            for name, headless in (("web", False), ("db", True)):
                await store.apply(Service(name, "shop", selector={"app": name},
                                          cluster_ip=HEADLESS if headless else None,
                                          ports=(ServicePort(80, 8080, name="http"),)))
            for n in range(120):
                address = ("fe80::1%eth0", f"fd00::{n}", f"10.0.{n}.1")[n % 3]
                await registry.register(Instance("pods", f"p-{n}", address, 8080, namespace="shop",
                                                 labels={"app": "web" if n % 2 else "db"}))
            catalog = ServiceCatalog(registry, store, rescan_interval=0.1)
            await catalog.start()
            await catalog.wait_until(lambda c: len(c.endpoints("shop", "web") or ()) == 60, 10)
            await catalog.close()
            return DnsServer(catalog, port=0, udp_rate_limit=None)

    yield asyncio.run(build())


NAMES = ["web.shop.svc.cluster.local", "_http._tcp.web.shop.svc.cluster.local", "db.shop.svc.cluster.local",
         "p-1.web.shop.svc.cluster.local", "cluster.local", "svc.cluster.local", "example.com",
         "shop.svc.cluster.local"]
_labels = st.lists(st.binary(min_size=1, max_size=63), min_size=0, max_size=6)


def wire_name(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    """A DNS query with any of its parts hostile: flags, counts, labels, type, class, EDNS and options."""
    if draw(st.booleans()):
        name = draw(st.sampled_from(NAMES))
        labels = [label.encode() for label in name.split(".")]
        if draw(st.booleans()):
            labels = [draw(st.sampled_from([label.upper(), label, "\u212a".encode() + label[1:]])) for label in labels]
    else:
        labels = draw(_labels)
    flags = draw(st.one_of(st.just(0x0100), st.integers(0, 0xFFFF)))
    questions = draw(st.one_of(st.just(1), st.integers(0, 0xFFFF)))
    counts = draw(st.one_of(st.just((0, 0)), st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))))
    rdtype = draw(st.one_of(st.sampled_from([1, 28, 33, 255, 6, 2, 5, 16, 65]), st.integers(0, 0xFFFF)))
    rdclass = draw(st.one_of(st.just(1), st.integers(0, 0xFFFF)))
    edns = draw(st.one_of(st.none(), st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
                                               st.binary(max_size=40))))
    wire = struct.pack("!HHHHHH", draw(st.integers(0, 0xFFFF)), flags, questions, *counts, 0 if edns is None else 1)
    wire += wire_name(labels) + struct.pack("!HH", rdtype, rdclass)
    if edns is not None:
        payload, ttl, options = edns
        wire += b"\0" + struct.pack("!HHIH", 41, payload, ttl, len(options)) + options
    if draw(st.booleans()):
        wire += draw(st.binary(max_size=30))  # trailing junk
    return wire


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire=st.one_of(packets(), st.binary(max_size=600)), udp=st.booleans())
def test_dns_packets_get_a_bounded_reply_or_none(dns_server: DnsServer, wire: bytes, udp: bool) -> None:
    started = time.process_time()
    reply = dns_server.answer(wire, udp=udp, source="fuzz")
    assert time.process_time() - started < MAX_SECONDS
    if len(wire) >= 3 and wire[2] & 0x80:
        assert reply is None, "a response is never answered"
    if reply is None:
        return
    assert len(reply) <= (MAX_UDP_ANSWER if udp else 65535)
    parsed = dns.message.from_wire(reply)
    assert parsed.flags & dns.flags.QR and parsed.id == struct.unpack("!H", wire[:2])[0]
