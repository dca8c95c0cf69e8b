"""The faults, each a coroutine that runs one trial against one backend and returns its :class:`TrialResult`.

Shared by the pytest suite (quick profile, ``tests/faults/test_faults.py``) and ``benchmarks/faults.py`` (full
profile). Every trial uses private servers (:class:`FaultServers`), a private scope, a live owner whose
registrations must survive, a dead owner (closed without deregistering just before the fault) whose instances
must disappear, and several watchers; see :mod:`tests.faults.trial` for the invariants.

Sleeps here are the faults' durations (a server stays down for N seconds), never synchronisation: every wait
for a state polls with a deadline.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from discovery.core.errors import BackendUnavailableError
from discovery.registry.async_registry import AsyncRegistry
from discovery.registry.registration import AsyncRegistration
from tests.faults.targets import TTL, Target
from tests.faults.trial import CONVERGENCE_LIMIT, POLL, Trial, TrialResult
from tests.harness import ServerHandle, start_server
from tests.harness.cluster import Cluster, start_cluster
from tests.harness.relay import Relay

T = TypeVar("T")

FAULTS = (
    "kill-short", "kill-long", "wipe", "session-loss", "partition", "leader-loss", "registrant-kill", "churn",
)
#: Faults after which the server has forgotten every registration of the live owner (so each must report
#: lost, then restored). A short kill loses them only where the server keeps no data (Consul ``-dev``).
ALWAYS_LOSES = frozenset({"kill-long", "wipe", "session-loss", "partition"})


@dataclass(frozen=True)
class Profile:
    """Trial counts and fault sizes."""

    name: str
    trials: int
    long_outage: float  # seconds a server stays down in kill-long (longer than the TTL)
    partition: float  # seconds the relay blackholes the owner (longer than the TTL and any notice bound)
    leader_window: float  # seconds of registering after the leader is killed
    owned: int  # live registrations per trial
    watchers: int  # direct watchers per trial
    registrant_count: int  # instances the killed registrant process sets out to register
    churn_registrants: int
    churn_watchers: int
    churn_owners: int  # registries the churning registrants are spread over
    churn_ops: int
    short_outage: float = 2.0


PROFILES = {
    "quick": Profile("quick", 1, long_outage=2 * TTL, partition=7.0, leader_window=3.0, owned=5, watchers=2,
                     registrant_count=200, churn_registrants=200, churn_watchers=20, churn_owners=10, churn_ops=400),
    "full": Profile("full", 20, long_outage=15.0, partition=15.0, leader_window=5.0, owned=20, watchers=3,
                    registrant_count=200, churn_registrants=200, churn_watchers=20, churn_owners=10,
                    churn_ops=2000),
}


class FaultServers:
    """Private single servers and three-node clusters for fault trials (never the session-shared servers)."""

    def __init__(self, provider: str, artifacts: Path | None = None) -> None:
        self.provider = provider
        self.artifacts = artifacts
        self._servers: dict[str, ServerHandle] = {}
        self._clusters: dict[str, Cluster] = {}
        self._lock = threading.Lock()

    def server(self, kind: str) -> ServerHandle:
        """The private ``kind`` server, started (again) if needed."""
        with self._lock:
            handle = self._servers.get(kind)
            if handle is None:
                handle = self._servers[kind] = start_server(kind, self.provider, artifacts_dir=self.artifacts)
            elif not handle.running:
                handle.start()
            return handle

    def cluster(self, kind: str) -> Cluster:
        """The private three-node ``kind`` cluster, every member running."""
        with self._lock:
            cluster = self._clusters.get(kind)
            if cluster is None:
                cluster = self._clusters[kind] = start_cluster(kind, self.provider, artifacts_dir=self.artifacts)
            for member in cluster.members:
                if not member.running:
                    member.start()
            return cluster

    def close(self) -> None:
        """Stop everything."""
        for handle in self._servers.values():
            handle.close()
        for cluster in self._clusters.values():
            cluster.close()
        self._servers.clear()
        self._clusters.clear()


def new_scope() -> str:
    """A private root / prefix / scope for one trial."""
    return f"faults-{uuid.uuid4().hex[:12]}"


async def run_fault(fault: str, target: Target, servers: FaultServers, profile: Profile) -> TrialResult:
    """Run one trial of ``fault`` against ``target``."""
    if fault in ("kill-short", "kill-long", "wipe", "session-loss", "partition"):
        return await _server_fault(fault, target, servers, profile)
    runners: dict[str, Callable[[Target, FaultServers, Profile], Awaitable[TrialResult]]] = {
        "leader-loss": _leader_loss,
        "registrant-kill": _registrant_kill,
        "churn": _churn,
    }
    return await runners[fault](target, servers, profile)


async def _open_watchers(trial: Trial, urls: list[str], cut_off: bool = False, label: str = "w") -> None:
    registries = await asyncio.gather(*(trial.open(url) for url in urls))
    for n, registry in enumerate(registries):
        trial.watch(registry, f"{label}{n}", cut_off=cut_off)


async def _doomed_owner(trial: Trial, url: str) -> AsyncRegistry:
    doomed = await trial.open(url)
    for n in range(2):
        await doomed.register(trial.instance(f"d-{n}"), ttl=TTL)
    return doomed


# -- faults 1-4: against one server -------------------------------------------------------------------------------


async def _server_fault(fault: str, target: Target, servers: FaultServers, profile: Profile) -> TrialResult:
    server = await asyncio.to_thread(servers.server, target.kind)
    scope = new_scope()
    direct = target.url(f"{server.host}:{server.port}", scope)
    relay = Relay(server.host, server.port).start() if fault == "partition" else None
    try:
        async with Trial(target, fault) as trial:
            await trial.checker(direct)
            owner_url = direct if relay is None else target.url(relay.address, scope)
            owner = await trial.open(owner_url)
            owned = await trial.register(owner, "a", profile.owned)
            await trial.probe(owner_url)
            doomed = await _doomed_owner(trial, direct)
            server_down = fault in ("kill-short", "kill-long", "wipe")
            await _open_watchers(trial, [direct] * profile.watchers, cut_off=server_down)
            if relay is not None:
                await _open_watchers(trial, [owner_url], cut_off=True, label="relayed")
            await trial.until_all_visible()
            await trial.kill_owner(doomed)
            if fault in ALWAYS_LOSES or (fault == "kill-short" and not server.keeps_data):
                trial.expect_lost = list(owned)
            down = time.monotonic()
            detection_from: float | None = None
            if server_down:
                await asyncio.to_thread(server.kill)
                if fault == "wipe":
                    await asyncio.to_thread(server.wipe_data)
                await asyncio.sleep(profile.long_outage if fault == "kill-long" else profile.short_outage)
                up = time.monotonic()
                await asyncio.to_thread(server.start)
            elif fault == "session-loss":
                await target.forget_registrations(owner, server.host, server.port)
                up = time.monotonic()
                detection_from = down
            else:
                assert relay is not None
                await asyncio.to_thread(relay.blackhole)
                await asyncio.sleep(profile.partition)
                up = time.monotonic()
                await asyncio.to_thread(relay.pass_through)
                detection_from = down
            healed = time.monotonic()
            trial.check_outage(down, up)
            await trial.settle(healed, detection_from)
            return await trial.finish()
    finally:
        if relay is not None:
            relay.close()


# -- fault 5: cluster leader loss ---------------------------------------------------------------------------------


def _wait_for_leader(cluster: Cluster, other_than: int | None, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        leader = cluster.leader()
        if leader is not None and leader != other_than:
            return leader
        if time.monotonic() > deadline:
            raise AssertionError(f"{cluster!r}: no leader within {timeout:g}s")
        time.sleep(POLL)


async def _leader_loss(target: Target, servers: FaultServers, profile: Profile) -> TrialResult:
    cluster = await asyncio.to_thread(servers.cluster, target.kind)
    leader = await asyncio.to_thread(_wait_for_leader, cluster, None)
    followers = [n for n in range(len(cluster.members)) if n != leader]
    scope = new_scope()

    def url(first: int) -> str:
        if target.kind == "consul":  # registrations belong to one agent: a follower's, which stays up
            member = cluster.members[first]
            return target.url(f"{member.host}:{member.port}", scope)
        order = [first, *(n for n in range(len(cluster.members)) if n != first)]
        return target.url(",".join(f"{cluster.members[n].host}:{cluster.members[n].port}" for n in order), scope)

    # etcd/ZooKeeper watchers start on every member, the leader included (they must fail over);
    # Consul watchers read through the two followers' agents.
    watcher_firsts = followers if target.kind == "consul" else [leader, *followers]
    try:
        async with Trial(target, "leader-loss") as trial:
            await trial.checker(url(followers[-1]))
            owner = await trial.open(url(followers[0]))
            await trial.register(owner, "a", profile.owned)
            await trial.probe(url(followers[0]))
            doomed = await _doomed_owner(trial, url(followers[0]))
            await _open_watchers(trial, [url(first) for first in watcher_firsts])
            await trial.until_all_visible()
            await trial.kill_owner(doomed)
            await asyncio.to_thread(cluster.members[leader].kill)
            killed = time.monotonic()
            election = asyncio.create_task(_elected_at(cluster, leader))
            made = 0
            while time.monotonic() - killed < profile.leader_window:
                registration = await _register_retrying(owner, trial, f"k-{made}")
                trial.track(registration)
                made += 1
                await asyncio.sleep(0.2)
            elected = await election
            trial.result.note = f"new leader after {elected - killed:.2f}s; {made} registered meanwhile"
            # Times count from the kill; the dead owner's bound from the election (leaders renew sessions/leases).
            await trial.settle(killed, detection_from=elected)
            return await trial.finish()
    finally:
        await asyncio.to_thread(cluster.members[leader].start)


async def _elected_at(cluster: Cluster, old_leader: int) -> float:
    await asyncio.to_thread(_wait_for_leader, cluster, old_leader)
    return time.monotonic()


async def _register_retrying(owner: AsyncRegistry, trial: Trial, suffix: str) -> AsyncRegistration:
    instance = trial.instance(suffix)
    return await _retrying(lambda: owner.register(instance, ttl=TTL))


async def _retrying(operation: Callable[[], Awaitable[T]]) -> T:
    """Retry an operation the server did not answer in time (election, overload), with jittered backoff.

    Registering and deregistering are idempotent, so repeating one whose answer was lost is safe.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(BackendUnavailableError),
        wait=wait_random_exponential(multiplier=0.05, max=1.0),
        stop=stop_after_delay(CONVERGENCE_LIMIT),
        reraise=True,
    ):
        with attempt:
            return await operation()
    raise AssertionError("unreachable")  # pragma: no cover


# -- fault 6: a registrant process killed while registering --------------------------------------------------------


async def _registrant_kill(target: Target, servers: FaultServers, profile: Profile) -> TrialResult:
    server = await asyncio.to_thread(servers.server, target.kind)
    direct = target.url(f"{server.host}:{server.port}", new_scope())
    async with Trial(target, "registrant-kill") as trial:
        await trial.checker(direct)
        owner = await trial.open(direct)
        await trial.register(owner, "a", profile.owned)
        await trial.probe(direct)
        await _open_watchers(trial, [direct] * profile.watchers)
        await trial.until_all_visible()
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(
                [sys.executable, "-m", "discovery.testing.registrant", direct, "default", trial.service,
                 str(profile.registrant_count), f"{TTL:g}"],
                stdout=subprocess.DEVNULL, stderr=errors,
            )
            prefix = f"{trial.service}-{process.pid}-"
            trial.dead_prefix(prefix)
            try:
                deadline = time.monotonic() + 60
                seen = 0
                while process.poll() is None and time.monotonic() < deadline:
                    seen = max(sum(1 for i in (w.latest.ids() if w.latest else ()) if i.startswith(prefix))
                               for w in trial.watchers)
                    if seen >= 10:
                        break
                    await asyncio.sleep(0.01)
                os.kill(process.pid, signal.SIGKILL)
            finally:
                process.kill()
                process.wait()
            killed = time.monotonic()
            if process.returncode != -signal.SIGKILL:
                errors.seek(0)
                trial.result.violations.append(f"registrant exited {process.returncode}: {errors.read()[-500:]!r}")
        trial.result.note = f"killed with {seen} of {profile.registrant_count} visible"
        await trial.settle(killed)
        return await trial.finish()


# -- fault 7: churn ------------------------------------------------------------------------------------------------


async def _churn(target: Target, servers: FaultServers, profile: Profile) -> TrialResult:
    server = await asyncio.to_thread(servers.server, target.kind)
    direct = target.url(f"{server.host}:{server.port}", new_scope())
    async with Trial(target, "churn") as trial:
        await trial.checker(direct)
        owners = list(await asyncio.gather(*(trial.open(direct) for _ in range(profile.churn_owners))))
        await trial.probe(direct)
        await _open_watchers(trial, [direct] * profile.churn_watchers)
        await trial.until_watchers_see(lambda s: True)
        workers = profile.churn_watchers  # as many concurrent churners as watchers
        held: dict[int, AsyncRegistration] = {}
        rng = random.Random()

        async def churn(worker: int) -> None:
            mine = list(range(worker, profile.churn_registrants, workers))
            for _ in range(profile.churn_ops // workers):
                number = rng.choice(mine)
                current = held.pop(number, None)
                if current is not None:
                    await _retrying(current.deregister)
                    trial.forget(current)
                else:
                    owner = owners[number % len(owners)]
                    instance = trial.instance(f"c-{number}")
                    made = await _retrying(functools.partial(owner.register, instance, ttl=TTL))
                    held[number] = trial.track(made)
                    trial.revive(instance.id)

        async with asyncio.TaskGroup() as group:  # one churner failing cancels the others
            for worker in range(workers):
                group.create_task(churn(worker))
        ended = time.monotonic()
        trial.result.note = f"{profile.churn_ops} ops, {len(held)} left registered"
        await trial.settle(ended)
        return await trial.finish()
