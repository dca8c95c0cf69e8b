"""Writing one registration to the agent and keeping it alive: the TTL heartbeat, ownership and self-healing.

The heartbeat passes the liveness check every TTL/3 (jittered). When the agent answers that it does not
know the check, the registration asks the agent who holds the service now (the owner mark in its ``Meta``,
docs/decisions/session-ownership.md): another registrant → the id was taken over: ``LOST`` (``TAKEN_OVER``), the
heartbeat stops and the registration never writes or deletes the service again; nobody (an operator deregistered
it, or the agent restarted and lost its state) → ``LOST`` (``REMOVED``), written again (retried with jittered
backoff until the agent answers), ``RESTORED``. Heartbeats failing for longer than the TTL (the check has
certainly gone critical) are ``LOST`` (``EXPIRED``), healed the same way once the agent answers.

The agent API has no compare-and-set: an update or delete first reads the owner mark, then writes. A takeover
landing between the two (milliseconds) is the one window left; the check ids carry the owner mark, so even then
the old owner's heartbeat never keeps the newcomer's registration alive.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from typing import Any

from consul import Check
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from discovery.core.backend import LostReason, RegistrationState, StateListener
from discovery.core.errors import BackendUnavailableError, NotRegisteredError
from discovery.core.models import Instance, Status
from discovery_consul import layout, records
from discovery_consul.connection import ConsulClient, UnknownToAgentError

log = logging.getLogger("discovery.backends.consul.keepalive")

# The status check only mirrors the status and must never expire on its own; it is re-set on every write
# and refreshed daily by the heartbeat.
STATUS_CHECK_TTL = "720h"
STATUS_REFRESH_SECONDS = 86400.0
HEARTBEAT_JITTER = 0.2
#: How the liveness check's notes start: the digest of the record follows.
RECORD_NOTE_PREFIX = "discovery record "


def _consul_duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def status_check_definition(service_id: str, owner: str | None, instance: Instance) -> dict[str, Any]:
    """The status check of a service (critical for DOWN and STARTING, with the status as its note), as its
    registrant adds it, or an operator's ``set-status`` on the agent that holds the service."""
    return {
        **Check.ttl(STATUS_CHECK_TTL),
        "CheckID": layout.status_check_id(service_id, owner),
        "Name": f"discovery status of {instance.id}",
        "Status": "passing" if records.status_check_passing(instance.status) else "critical",
        "Notes": f"{records.STATUS_CHECK_NOTE_PREFIX}{instance.status.value}",
    }


class Registration:
    """One instance this backend registered, and the task that keeps it alive."""

    def __init__(
        self,
        client: ConsulClient,
        instance: Instance,
        ttl: float,
        on_state: StateListener,
        deregister_after: float,
        scope: str | None = None,
        *,
        owner: str | None = None,
        known_to_agent: bool = True,
    ) -> None:
        self.instance = instance
        # False only while the agent certainly has no checks of this service id: Consul keeps an existing
        # check's status when a service is re-registered, so only then does the registration's initial
        # ``Status`` of each check take effect and the write is a single call.
        self.known_to_agent = known_to_agent
        # Whether the agent may hold this service's status check. A new UP registration has none: an agent's
        # work per write grows with every check it holds (its anti-entropy compares them all), so one check per
        # UP instance instead of two nearly doubles its registration rate once it holds thousands
        # (docs/decisions/consul-health-and-status.md). The check is added by the first write of a status that
        # fails it, and kept from then on.
        self._status_check_held = known_to_agent
        self.scope = scope
        self.ttl = ttl
        self.on_state = on_state
        self.service_id = layout.consul_service_id(instance, scope)
        #: This registrant's owner mark (in ``Meta`` and in the check ids).
        self.owner = owner
        self._given_up = False
        self._client = client
        self._deregister_after = deregister_after
        self._lock = asyncio.Lock()
        self._lost = False
        self._last_alive = time.monotonic()
        self._status_set_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Registration({self.service_id!r}, ttl={self.ttl:g})"

    @property
    def heartbeat_interval(self) -> float:
        """TTL/3: two heartbeats may be lost before the check goes critical."""
        return self.ttl / 3

    def _checks(self) -> list[dict[str, Any]]:
        liveness: dict[str, Any] = {
            **Check.ttl(_consul_duration(self.ttl)),
            "CheckID": layout.liveness_check_id(self.service_id, self.owner),
            "Name": f"discovery heartbeat of {self.instance.id}",
            # Check.ttl() has no parameter for this; Consul's minimum is one minute.
            "DeregisterCriticalServiceAfter": _consul_duration(self._deregister_after),
            "Status": "passing",
            # The record's digest: rewriting any field rewrites this check, which moves its ModifyIndex in
            # /v1/health/state/any, the change feed every watcher follows (a Meta change alone would not).
            "Notes": f"{RECORD_NOTE_PREFIX}{self._digest()}",
        }
        if not self._status_check_wanted():
            return [liveness]
        return [liveness, status_check_definition(self.service_id, self.owner, self.instance)]

    def _status_check_wanted(self) -> bool:
        return self._status_check_held or not records.status_check_passing(self.instance.status)

    def adopt(self, instance: Instance) -> None:
        """Take ``instance`` (changed by someone else, e.g. an operator's ``set-status``) as this registration's
        record; a status that fails the status check means that check now exists at the agent."""
        self.instance = instance
        if not records.status_check_passing(instance.status):
            self._status_check_held = True

    async def _set_status_check(self, status: Status) -> None:
        """Pass or fail the status check as ``status`` asks; none held means passing (nothing to write)."""
        if self._status_check_held:
            await self._client.update_ttl_check(
                layout.status_check_id(self.service_id, self.owner),
                records.status_check_passing(status),
                note=f"{records.STATUS_CHECK_NOTE_PREFIX}{status.value}",
            )
        self._status_set_at = time.monotonic()

    def _digest(self) -> str:
        instance = self.instance
        record = [instance.address, instance.port, instance.weight, layout.service_tags(instance),
                  records.instance_meta(instance, self.scope)]
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]

    async def write(self, *, fresh: bool) -> None:
        """Write the service, its status and maintenance mode; ``fresh`` replaces every check (new/restored).

        An update (``fresh=False``) keeps the existing checks, maintenance included, so a DRAINING instance
        whose labels change never looks UP in between.
        """
        async with self._lock:
            instance = self.instance
            meta = records.instance_meta(instance, self.scope, self.owner)
            records.check_meta_limits(meta)
            await self._client.register_service(
                name=instance.service,
                service_id=self.service_id,
                address=instance.address,
                port=instance.port,
                tags=[instance.namespace],
                meta=meta,
                weight=instance.weight,
                checks=(checks := self._checks()),
                replace_existing_checks=fresh,
            )
            self._status_check_held |= len(checks) > 1
            first_write, self.known_to_agent = not self.known_to_agent, True
            if first_write:
                # New checks start with the statuses registered above (liveness passing, status as declared).
                self._status_set_at = self._last_alive = time.monotonic()
                if instance.status == Status.DRAINING:
                    await self._client.set_maintenance(self.service_id, True, reason="discovery: DRAINING")
                return
            await self._set_status_check(instance.status)
            # A TTL service starts critical until its first pass: pass now, not one interval later.
            await self._client.update_ttl_check(layout.liveness_check_id(self.service_id, self.owner), True)
            self._last_alive = time.monotonic()
            draining = instance.status == Status.DRAINING
            if draining or not fresh:
                await self._client.set_maintenance(self.service_id, draining, reason="discovery: DRAINING")

    @property
    def given_up(self) -> bool:
        """Whether another registrant took the id over: this registration never touches it again."""
        return self._given_up

    async def holder(self) -> str:
        """Who holds the service at the agent now: ``"ours"``, ``"missing"`` or ``"other"``."""
        service = await self._client.agent_service(self.service_id)
        if service is None:
            return "missing"
        return "ours" if records.owner_of(service) == self.owner else "other"

    async def update(self) -> None:
        """Write :attr:`instance` (already set to the new value) if the service is still ours.

        Gone: written back (``LOST`` ``REMOVED`` → ``RESTORED``). Another registrant's: given up (``LOST``
        ``TAKEN_OVER``) and :class:`NotRegisteredError`, nothing written.
        """
        holder = await self.holder()
        if holder == "other":
            self._give_up()
            await self.stop()
            raise NotRegisteredError(f"{self.service_id} was taken over by another registrant")
        if holder == "ours":
            await self.write(fresh=False)
            return
        already_lost = self._lost
        self._set_lost(LostReason.REMOVED)
        await self.write(fresh=True)
        if not already_lost:
            self._lost = False
            self.on_state(RegistrationState.RESTORED)

    def _give_up(self) -> None:
        if self._given_up:
            return
        self._given_up = self._lost = True
        log.warning("%s: taken over by another registrant; no longer kept alive here", self)
        self.on_state(RegistrationState.LOST, LostReason.TAKEN_OVER)

    def start(self) -> None:
        """Start the heartbeat task."""
        if self._task is None:
            self._task = asyncio.create_task(self._heartbeat_forever(), name=f"discovery-consul-{self.service_id}")

    async def stop(self) -> None:
        """Stop the heartbeat task (the registration stays in Consul until deregistered or reaped)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _heartbeat_forever(self) -> None:
        while not self._given_up:
            jitter = random.uniform(1 - HEARTBEAT_JITTER, 1.0)  # spread, not secrecy
            await asyncio.sleep(self.heartbeat_interval * jitter)
            try:
                await self._beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat of %s failed; trying again next interval", self.service_id)

    async def _beat(self) -> None:
        interval = self.heartbeat_interval
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(BackendUnavailableError),
                wait=wait_random_exponential(multiplier=0.05, max=interval / 2),
                stop=stop_after_delay(interval),
                reraise=True,
            ):
                with attempt:
                    await self._pass_checks()
        except BackendUnavailableError as error:
            if not self._lost and time.monotonic() - self._last_alive > self.ttl:
                log.warning("%s: no heartbeat for longer than its TTL (%s); registration lost", self, error)
                self._set_lost(LostReason.EXPIRED)
            return
        except UnknownToAgentError:
            if await self.holder() == "other":
                self._give_up()
                return
            log.warning("%s: the Consul agent no longer holds the registration; registering again", self)
            self._set_lost(LostReason.REMOVED)
        if self._lost:
            await self._restore()

    async def _pass_checks(self) -> None:
        await self._client.update_ttl_check(layout.liveness_check_id(self.service_id, self.owner), True)
        self._last_alive = time.monotonic()
        if time.monotonic() - self._status_set_at > STATUS_REFRESH_SECONDS:
            await self._set_status_check(self.instance.status)

    def _set_lost(self, reason: LostReason) -> None:
        if not self._lost:
            self._lost = True
            self.on_state(RegistrationState.LOST, reason)

    async def _restore(self) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((BackendUnavailableError, UnknownToAgentError)),
            wait=wait_random_exponential(multiplier=0.1, max=min(self.ttl, 5.0)),
            reraise=True,
        ):
            with attempt:
                if await self.holder() == "other":
                    self._give_up()
                    return
                await self.write(fresh=True)
        self._lost = False
        log.info("%s restored", self)
        self.on_state(RegistrationState.RESTORED)

