"""Scenario 4: restore — the server forgets a live registration; time until the registration reports
``restored`` and until a watcher (another registry) sees the instance again.

How each backend is made to forget: ZooKeeper — the session is expired (a twin client with the same session id
and password closes it, as in the ZooKeeper tests); etcd — the lease is revoked with a raw client; Consul — the
service is deregistered through the agent's HTTP API; memory — the entry is removed from the store.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from typing import Any

from benchmarks.context import RunContext
from benchmarks.detection import Follower
from benchmarks.report import Report, Row
from benchmarks.stats import summarize
from benchmarks.tools import OursTool, Target
from discovery.core.backend import RegistrationState

SCENARIO = "4-restore"
TIMEOUT = 60.0
CLOSE_DEADLINE = 30.0
#: close() calls that had not returned after CLOSE_DEADLINE (reported in the row's note; the run goes on).
hung_closes: list[str] = []


def _close_with_deadline(tool: OursTool, label: str) -> None:
    """Close in a daemon thread so that a close() that never returns cannot stop the whole run."""
    closer = threading.Thread(target=tool.close, daemon=True, name=f"close-{label}")
    closer.start()
    closer.join(CLOSE_DEADLINE)
    if closer.is_alive():
        hung_closes.append(label)


def _make_forget(context: RunContext, target: Target, owner: OursTool, ident: str) -> None:
    backend: Any = owner.registry.async_registry.backend
    instance = owner.instance(ident)
    if target.backend == "zookeeper":
        from tests.backends.zookeeper_support import expire_session_now

        expire_session_now(context.servers["zookeeper"], backend)
    elif target.backend == "etcd":
        import aetcd

        async def revoke() -> None:
            async with aetcd.Client(host=target.host, port=target.port, timeout=5) as client:
                await client.revoke_lease(backend.lease_ids()[int(target.ttl)])

        asyncio.run(revoke())
    elif target.backend == "consul":
        from discovery_consul.layout import consul_service_id

        service_id = consul_service_id(instance, target.scope)
        request = urllib.request.Request(
            f"http://{target.host}:{target.port}/v1/agent/service/deregister/{service_id}", method="PUT", data=b""
        )
        with urllib.request.urlopen(request, timeout=5):
            pass
    else:
        backend.store.remove(instance.key)


def _trial(context: RunContext, target: Target, trial: int) -> tuple[float, float]:
    owner, watcher = OursTool(target), OursTool(target)
    ident = f"r{trial}"
    try:
        follower = Follower()
        watcher.watch(follower)
        owner.register(ident)
        follower.wait(lambda ids: ident in ids, 30)
        restored: list[int] = []
        owner.registration(ident).on_change(
            lambda _r, state: restored.append(time.monotonic_ns()) if state is RegistrationState.RESTORED else None
        )
        _make_forget(context, target, owner, ident)
        lost_at = time.monotonic_ns()
        owner.registration(ident).wait_for(RegistrationState.RESTORED, TIMEOUT)
        back = follower.wait(lambda ids: ident in ids, TIMEOUT)
        with follower.changed:
            timeline = [(t, ident in ids) for t, ids in follower.events if t >= lost_at]
        went = next((t for t, present in timeline if not present), None)
        if went is not None:  # the watcher saw it go: visible again at the first set with it after that
            back = next(t for t, present in timeline if present and t > went)
        else:  # the gap was shorter than the watch could show
            back = max(lost_at, restored[0] if restored else back)
        return (restored[0] - lost_at) / 1e9, (back - lost_at) / 1e9
    finally:
        _close_with_deadline(owner, f"{target.backend} owner {ident}")
        _close_with_deadline(watcher, f"{target.backend} watcher {ident}")


def run(context: RunContext, report: Report, backend: str) -> None:
    """Restore times of ours."""
    target = context.target(backend, "restore")
    hung_before = len(hung_closes)
    try:
        results = [_trial(context, target, n) for n in range(context.profile.restore_trials)]
    except Exception as error:
        report.add(Row(SCENARIO, backend, "ours", "s", status="failed", note=f"{type(error).__name__}: {error}"))
        return
    values = summarize([r for r, _ in results])
    visible = summarize([v for _, v in results])
    values["visible_p50"] = visible["p50"]
    values["visible_p99"] = visible["p99"]
    how = {"zookeeper": "session expired", "etcd": "lease revoked", "consul": "service deregistered at the agent",
           "memory": "entry removed from the store"}[backend]
    note = f"{how}; p50/p99 = loss → restored"
    hung = hung_closes[hung_before:]
    if hung:
        note += f"; Registry.close() did not return within {CLOSE_DEADLINE:g} s for: {', '.join(hung)}"
    report.add(Row(SCENARIO, backend, "ours", "s", values, note=note))
