"""Helpers for the Consul backend tests: Consul DNS, the agent's HTTP API (waiting: discovery.testing)."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Any

import dns.message
import dns.query
import dns.rdatatype

from discovery.core.backend import Backend, LostReason, RegistrationState
from discovery.core.plugins import create_backend


async def started_backend(url: str) -> Backend:
    """A started backend for ``url``."""
    backend = create_backend(url)
    await backend.start()
    return backend


def unique(name: str) -> str:
    """A service name no other test uses (DNS and the catalog are not scoped)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


class StateLog:
    """Collects ``on_state`` calls with their times."""

    def __init__(self) -> None:
        self.states: list[RegistrationState] = []
        self.reasons: list[LostReason | None] = []
        self.times: list[float] = []

    def __call__(self, state: RegistrationState, reason: LostReason | None = None) -> None:
        self.states.append(state)
        self.reasons.append(reason)
        self.times.append(time.monotonic())


def http_json(host: str, port: int, path: str, method: str = "GET") -> Any:
    """Call the agent's HTTP API (bypassing the backend)."""
    body = b"" if method == "PUT" else None
    request = urllib.request.Request(f"http://{host}:{port}{path}", method=method, data=body)
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


def dns_answers(host: str, port: int, name: str, rdtype: str) -> list[str]:
    """The answer records (as text) of one query to Consul's DNS interface."""
    query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
    response = dns.query.udp(query, host, port=port, timeout=2)
    return sorted(item.to_text() for rrset in response.answer for item in rrset)


def srv_ports(host: str, port: int, name: str) -> set[int]:
    """The ports of the SRV answers for ``name``."""
    return {int(record.split()[2]) for record in dns_answers(host, port, name, "SRV")}
