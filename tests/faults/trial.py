"""One fault trial: the registries it opens, what they saw, and the invariants checked at the end.

A :class:`Trial` records every snapshot each watcher received (with its arrival time) and every state change
of every registration, then :meth:`Trial.settle` polls a fresh list until the invariants hold or a deadline
passes, and :meth:`Trial.finish` closes everything and checks for leaked tasks and threads:

* lost = 0 - every registration of a live owner is in a fresh list and in every watcher's last snapshot, and
  where the fault made the server forget it, its history shows ``lost`` then ``restored``;
* stale = 0 - no instance of a dead owner is left once the detection bound has passed;
* converged - every watcher's last snapshot equals a fresh list and is not stale; a watcher cut off from the
  server marked its snapshot stale within the backend's notice bound and published nothing fresh until the
  server was back;
* no duplicate ids, strictly increasing revisions, no error logged by a background task, no task or thread
  left after ``close()``;
* read-your-writes and monotonic reads - a :class:`SessionProbe` registry writes its own (watched) service
  throughout the trial and reads it back the moment each write returns: a fresh read that does not show the write,
  or a read older than one handed out before, is a violation (a stale-marked read during an outage is allowed).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from discovery.core.backend import RegistrationState
from discovery.core.errors import DiscoveryError
from discovery.core.models import Instance, Snapshot
from discovery.registry.async_registry import AsyncRegistry
from discovery.registry.registration import AsyncRegistration
from tests.faults.targets import TTL, Target

NAMESPACE = "default"
#: Scheduling allowance on top of a declared bound (a loaded 2-core machine), as in the conformance kit.
ALLOWANCE = 1.0
#: How long after the fault ends everything may take to converge before the trial counts what is missing.
CONVERGENCE_LIMIT = 20.0
POLL = 0.05
#: Threads that outlive a trial by design: the event loop's default executor and the relay.
_OWN_THREAD_PREFIXES = ("asyncio_", "relay-", "ThreadPoolExecutor")
#: Process-wide threads a library starts on first use and keeps (grpc.aio's completion-queue poller).
_PROCESS_THREADS = ("_poll_wrapper",)


@dataclass
class TrialResult:
    """What one trial of one fault on one backend measured."""

    fault: str
    backend: str
    registrations: int = 0
    lost: int = 0
    stale: int = 0
    watchers: int = 0
    converged: int = 0
    duplicates: int = 0
    violations: list[str] = field(default_factory=list)
    restore_s: float | None = None
    convergence_s: float | None = None
    #: Writes of the session probe that returned, each read back at once; and the reads that broke a guarantee.
    own_writes: int = 0
    read_your_writes: int = 0
    monotonic: int = 0
    note: str = ""
    #: What was wrong at the end (missing ids, each watcher's last snapshot), for failure messages.
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Every invariant held."""
        return (self.lost == 0 and self.stale == 0 and self.converged == self.watchers and self.duplicates == 0
                and self.read_your_writes == 0 and self.monotonic == 0 and not self.violations)

    def describe(self) -> str:
        """One line for assertion messages and logs."""
        timing = f"restore={_fmt(self.restore_s)} convergence={_fmt(self.convergence_s)}"
        return (f"{self.fault}/{self.backend}: registrations={self.registrations} lost={self.lost} "
                f"stale={self.stale} converged={self.converged}/{self.watchers} duplicates={self.duplicates} "
                f"own writes={self.own_writes} read-your-writes={self.read_your_writes} "
                f"monotonic={self.monotonic} {timing} {self.note} violations={self.violations} {self.detail}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


class Watcher:
    """A registry subscribed to the service, keeping every snapshot it received with its arrival time."""

    def __init__(self, registry: AsyncRegistry, service: str, label: str, *, cut_off: bool) -> None:
        self.registry = registry
        self.label = label
        #: Whether the fault cuts this watcher off the server (it must then mark its snapshot stale).
        self.cut_off = cut_off
        self.seen: list[tuple[float, Snapshot]] = []
        self.problems: list[str] = []
        self.duplicates = 0
        registry.subscribe(service, self._receive, NAMESPACE)

    def _receive(self, snapshot: Snapshot) -> None:
        if self.seen and snapshot.revision <= self.seen[-1][1].revision:
            self.problems.append(f"{self.label}: revision {snapshot.revision} after {self.seen[-1][1].revision}")
        if len(snapshot.ids()) != len(snapshot.instances):
            self.duplicates += 1
        self.seen.append((time.monotonic(), snapshot))

    @property
    def latest(self) -> Snapshot | None:
        """The last snapshot received."""
        return self.seen[-1][1] if self.seen else None

    def check_outage(self, down: float, up: float, notice: float) -> str | None:
        """For a watcher cut off during ``[down, up)``: stale within ``notice``, nothing fresh until ``up``."""
        if up - down <= notice + ALLOWANCE:
            return None  # too short an outage to require noticing it
        first_stale = next((t for t, s in self.seen if s.stale and t >= down), None)
        if first_stale is None or first_stale > down + notice + ALLOWANCE:
            after = "never" if first_stale is None else f"after {first_stale - down:.2f}s"
            return f"{self.label}: not marked stale within {notice:.1f}s of the outage ({after})"
        fresh = [t for t, s in self.seen if first_stale < t < up and not s.stale]
        if fresh:
            return f"{self.label}: published a fresh snapshot {fresh[0] - down:.2f}s into the outage"
        return None


class SessionProbe:
    """A registry that keeps writing its own service (register, update, deregister, in turn) and reads it back the
    moment each write returns, while a subscription keeps the service watched (reads come from the watch cache).

    Counts the writes read back, the read-backs that did not show the write without being marked stale
    (read-your-writes), and the reads whose revision was older than one handed out before (monotonic reads).
    A write the server did not confirm (an error during the fault) promises nothing and is not counted.
    """

    #: Seconds between two writes: pacing, not synchronisation.
    PACE = 0.05

    def __init__(self, registry: AsyncRegistry, service: str) -> None:
        self.registry = registry
        self.service = service
        self.own_writes = 0
        self.read_your_writes: list[str] = []
        self.monotonic: list[str] = []
        self._newest = 0
        registry.subscribe(service, self._note, NAMESPACE)
        self._task = asyncio.create_task(self._run(), name="faults-session-probe")

    def _note(self, snapshot: Snapshot) -> None:
        if snapshot.revision < self._newest:
            self.monotonic.append(f"revision {snapshot.revision} handed out after {self._newest}")
        self._newest = max(self._newest, snapshot.revision)

    async def stop(self) -> None:
        """Stop writing."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        number = 0
        registration: AsyncRegistration | None = None
        while True:
            await asyncio.sleep(self.PACE)
            try:
                if registration is None:
                    number += 1
                    written = Instance(self.service, f"p-{number}", "127.0.0.1", 30000, namespace=NAMESPACE)
                    registration = await self.registry.register(written, ttl=TTL)
                    what, expected = f"register {written.id}", written
                elif registration.instance.weight == 1:
                    written = await registration.update(weight=2)
                    what, expected = f"update {written.id}", written
                else:
                    written = registration.instance
                    registration, doomed = None, registration
                    await doomed.deregister()
                    what, expected = f"deregister {written.id}", None
            except DiscoveryError:
                registration = None  # unconfirmed: start again with a new id
                continue
            snapshot = await self.registry.snapshot(self.service, NAMESPACE)
            self._note(snapshot)
            self.own_writes += 1
            shown = snapshot.get(written.id)
            reflected = shown == expected if expected is not None else shown != written
            if not reflected and not snapshot.stale:
                self.read_your_writes.append(f"{what}: read back revision {snapshot.revision} without it")


class Trial:
    """Opens registries for one trial and checks the invariants at its end. Use as ``async with``."""

    def __init__(self, target: Target, fault: str, service: str | None = None) -> None:
        self.target = target
        self.fault = fault
        # A service name of its own: Consul's health query returns every scope's entries of a name, so a
        # shared name would make each trial read the critical leftovers of the previous ones.
        self.service = service or f"svc-{uuid.uuid4().hex[:8]}"
        self.result = TrialResult(fault, target.kind)
        self.registries: list[AsyncRegistry] = []
        self.watchers: list[Watcher] = []
        #: Registrations whose owner is alive: they must survive the fault.
        self.alive: list[AsyncRegistration] = []
        #: Registrations the fault makes the server forget: each must report lost, then restored.
        self.expect_lost: list[AsyncRegistration] = []
        self.state_times: dict[int, list[tuple[float, RegistrationState]]] = {}
        self._dead_ids: set[str] = set()
        self._dead_prefixes: list[str] = []
        self._errors: list[str] = []
        self._log_handler = _ErrorCollector(self._errors)
        self._threads_before: set[int] = set()
        self._checker: AsyncRegistry | None = None
        self._probe: SessionProbe | None = None

    async def __aenter__(self) -> Trial:
        loop = asyncio.get_running_loop()
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._on_loop_exception)
        logging.getLogger().addHandler(self._log_handler)
        self._threads_before = {t.ident for t in threading.enumerate() if t.ident is not None}
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_probe()
        await self._close_all()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._previous_handler)
        logging.getLogger().removeHandler(self._log_handler)

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        self._errors.append(f"loop: {context.get('message')} {context.get('exception')!r}")

    # -- set-up -------------------------------------------------------------------------------------------------

    async def open(self, url: str) -> AsyncRegistry:
        """A connected registry, closed by the trial."""
        registry = await AsyncRegistry.connect(url)
        self.registries.append(registry)
        return registry

    async def checker(self, url: str) -> AsyncRegistry:
        """The registry whose fresh lists are the truth (it never watches)."""
        self._checker = await self.open(url)
        return self._checker

    async def probe(self, url: str) -> SessionProbe:
        """Start the session probe on a registry of its own, through ``url`` (the owner's way to the server)."""
        self._probe = SessionProbe(await self.open(url), f"{self.service}-own")
        return self._probe

    async def _stop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is None:
            return
        await probe.stop()
        self.result.own_writes = probe.own_writes
        self.result.read_your_writes = len(probe.read_your_writes)
        self.result.monotonic = len(probe.monotonic)
        broken = [f"read-your-writes: {v}" for v in probe.read_your_writes[:5]]
        broken += [f"monotonic reads: {v}" for v in probe.monotonic[:5]]
        if broken:
            self.result.detail = f"{self.result.detail} {'; '.join(broken)}".strip()

    def track(self, registration: AsyncRegistration) -> AsyncRegistration:
        """Record a live owner's registration and its state changes."""
        times = self.state_times.setdefault(id(registration), [(time.monotonic(), registration.state)])
        registration.on_change(lambda _, state: times.append((time.monotonic(), state)))
        self.alive.append(registration)
        return registration

    async def register(self, registry: AsyncRegistry, prefix: str, count: int) -> list[AsyncRegistration]:
        """Register ``count`` instances ``<service>-<prefix>-<n>`` and track them."""
        made = await asyncio.gather(*(registry.register(self.instance(f"{prefix}-{n}"), ttl=TTL)
                                      for n in range(count)))
        return [self.track(r) for r in made]

    def instance(self, suffix: str) -> Instance:
        """An instance of the trial's service."""
        return Instance(self.service, f"{self.service}-{suffix}", "127.0.0.1", 20000, namespace=NAMESPACE,
                        labels={"fault": self.fault})

    def watch(self, registry: AsyncRegistry, label: str, *, cut_off: bool = False) -> Watcher:
        """Subscribe ``registry`` to the service."""
        watcher = Watcher(registry, self.service, label, cut_off=cut_off)
        self.watchers.append(watcher)
        return watcher

    async def kill_owner(self, registry: AsyncRegistry) -> None:
        """The owner dies (no deregistration): its instances must go within the detection bound."""
        for registration in registry.registrations:
            self._dead_ids.add(registration.instance.id)
            if registration in self.alive:
                self.alive.remove(registration)
        await registry.close(deregister=False)

    def forget(self, registration: AsyncRegistration) -> None:
        """A registration was deregistered: its instance must be gone from now on."""
        if registration in self.alive:
            self.alive.remove(registration)
        self._dead_ids.add(registration.instance.id)

    def revive(self, instance_id: str) -> None:
        """An id was registered again: it is no longer dead."""
        self._dead_ids.discard(instance_id)

    def dead_prefix(self, prefix: str) -> None:
        """Every instance id starting with ``prefix`` belongs to a dead owner (a killed process)."""
        self._dead_prefixes.append(prefix)

    def dead_ids(self, ids: Iterable[str]) -> None:
        """These ids belong to deregistered or dead registrations."""
        self._dead_ids.update(ids)

    def _is_dead(self, instance_id: str) -> bool:
        return instance_id in self._dead_ids or any(instance_id.startswith(p) for p in self._dead_prefixes)

    async def until_watchers_see(self, accept: Callable[[Snapshot], bool], timeout: float = CONVERGENCE_LIMIT) -> None:
        """Wait until every watcher's latest snapshot is fresh and satisfies ``accept``."""
        deadline = time.monotonic() + timeout
        while not all(w.latest is not None and not w.latest.stale and accept(w.latest) for w in self.watchers):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.fault}/{self.target.kind}: watchers did not reach the start state: "
                                     f"{[sorted(w.latest.ids()) if w.latest else None for w in self.watchers]}")
            await asyncio.sleep(POLL)

    async def until_all_visible(self) -> None:
        """Wait until every watcher shows every live registration (the state before the fault)."""
        wanted = {r.instance.id for r in self.alive} | self._dead_ids
        await self.until_watchers_see(lambda s: wanted <= s.ids())

    # -- the end ------------------------------------------------------------------------------------------------

    async def settle(self, healed_at: float, detection_from: float | None = None) -> TrialResult:
        """Poll until the invariants hold (or the convergence limit passes after ``healed_at``) and count.

        Dead owners' instances must be gone ``detection bound + allowance`` after ``detection_from``
        (default: ``healed_at``).
        """
        assert self._checker is not None, "call checker() first"
        bound = self._checker.detection_bound(TTL)
        dead_deadline = (healed_at if detection_from is None else detection_from) + bound + ALLOWANCE
        deadline = healed_at + CONVERGENCE_LIMIT
        stale_counted = False
        truth: tuple[Instance, ...] = ()
        while True:
            now = time.monotonic()
            try:
                truth = await self._checker.backend.list(NAMESPACE, self.service)
            except Exception as error:  # the checker may briefly fail while a cluster elects a leader
                if now > deadline:
                    self._errors.append(f"checker list failed: {error!r}")
                    break
                await asyncio.sleep(POLL)
                continue
            if not stale_counted and now >= dead_deadline:
                stale_counted = True
                self.result.stale = len(self._dead_present(truth))
            if self._all_hold(truth):
                self.result.convergence_s = max(0.0, now - healed_at)
                break
            if now > deadline:
                break
            await asyncio.sleep(POLL)
        self._count(truth, healed_at)
        return self.result

    def _dead_present(self, truth: tuple[Instance, ...]) -> set[str]:
        present = {i.id for i in truth if self._is_dead(i.id)}
        for watcher in self.watchers:
            # A stale snapshot claims nothing (it is the last set seen before the watcher was cut off).
            if watcher.latest is not None and not watcher.latest.stale:
                present |= {i for i in watcher.latest.ids() if self._is_dead(i)}
        return present

    def _registration_healed(self, registration: AsyncRegistration) -> bool:
        history = list(registration.history)
        if registration.state is RegistrationState.LOST:
            return False
        if registration in self.expect_lost:
            if RegistrationState.LOST not in history:
                return False
            last_lost = len(history) - 1 - history[::-1].index(RegistrationState.LOST)
            return RegistrationState.RESTORED in history[last_lost:]
        return True

    def _all_hold(self, truth: tuple[Instance, ...]) -> bool:
        ids = {i.id for i in truth}
        if any(r.instance.id not in ids for r in self.alive) or self._dead_present(truth):
            return False
        if not all(self._registration_healed(r) for r in self.alive):
            return False
        return all(w.latest is not None and not w.latest.stale and w.latest.same_members(truth) for w in self.watchers)

    def _count(self, truth: tuple[Instance, ...], healed_at: float) -> None:
        result = self.result
        result.registrations = len(self.alive)
        ids = {i.id for i in truth}
        missing = {r.instance.id for r in self.alive if r.instance.id not in ids}
        missing |= {r.instance.id for r in self.alive if not self._registration_healed(r)}
        for watcher in self.watchers:
            seen = watcher.latest.ids() if watcher.latest is not None else frozenset()
            missing |= {r.instance.id for r in self.alive if r.instance.id not in seen}
        result.lost = len(missing)
        if not self._all_hold(truth):
            watchers = "; ".join(
                f"{w.label}: {'stale ' if w.latest.stale else ''}-{sorted(ids - w.latest.ids())} "
                f"+{sorted(w.latest.ids() - ids)}"
                for w in self.watchers if w.latest is not None and (w.latest.stale or not w.latest.same_members(truth))
            )
            states = {r.instance.id: [s.value for s in r.history]
                      for r in self.alive if not self._registration_healed(r)}
            result.detail = f"missing={sorted(missing)} unhealed={states} watchers off the truth: {watchers}"
        result.stale = max(result.stale, len(self._dead_present(truth)))
        result.watchers = len(self.watchers)
        result.converged = sum(
            1 for w in self.watchers if w.latest is not None and not w.latest.stale and w.latest.same_members(truth)
        )
        result.duplicates = sum(w.duplicates for w in self.watchers) + (len(truth) - len(ids))
        restored = []
        for registration in self.expect_lost:
            times = [t for t, s in self.state_times.get(id(registration), []) if s is RegistrationState.RESTORED]
            if times:
                restored.append(max(0.0, times[-1] - healed_at))
        if restored:
            result.restore_s = max(restored)

    def check_outage(self, down: float, up: float) -> None:
        """Every cut-off watcher noticed the outage ``[down, up)`` and claimed nothing fresh during it."""
        for watcher in self.watchers:
            if watcher.cut_off:
                problem = watcher.check_outage(down, up, self.target.unreachable_notice)
                if problem:
                    self.result.violations.append(problem)

    async def finish(self) -> TrialResult:
        """Stop the session probe, close every registry, then check for errors, leaked tasks and leaked threads."""
        await self._stop_probe()
        await self._close_all()
        for watcher in self.watchers:
            self.result.violations.extend(watcher.problems)
        current = asyncio.current_task()
        deadline = time.monotonic() + TTL + 5.0
        while True:
            tasks = [t for t in asyncio.all_tasks()
                     if t is not current and not t.done() and not t.get_name().startswith("faults-")]
            threads = [t for t in threading.enumerate()
                       if t.ident not in self._threads_before and t.is_alive()
                       and not t.name.startswith(_OWN_THREAD_PREFIXES)
                       and not any(name in t.name for name in _PROCESS_THREADS)]
            if (not tasks and not threads) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        if tasks:
            self.result.violations.append(f"tasks left after close: {sorted(t.get_name() for t in tasks)}")
        if threads:
            self.result.violations.append(f"threads left after close: {sorted(t.name for t in threads)}")
        self.result.violations.extend(self._errors)
        return self.result

    async def _close_all(self) -> None:
        registries, self.registries = self.registries, []
        for registry in registries:
            try:
                await registry.close()
            except Exception as error:
                self._errors.append(f"close failed: {error!r}")


class _ErrorCollector(logging.Handler):
    """Errors logged by the library's background tasks (and the watch safety net's warnings)."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("discovery"):
            return
        if record.levelno >= logging.ERROR or record.name == "discovery.registry.watch_hub":
            self._sink.append(f"log {record.name}: {record.getMessage()}")
