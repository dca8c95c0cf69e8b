"""Leases: one per distinct TTL, kept alive by our own loop, re-granted (with every key re-written) when lost.

aetcd runs no keepalive of its own. Each :class:`LeaseGroup` refreshes its lease every TTL/3 (jittered).
A refresh answered with TTL 0 means the lease is gone (expired during a partition or pause, or revoked
from outside): the group emits ``LOST``, grants a new lease, re-puts every key it holds and emits
``RESTORED``. When no refresh has succeeded for a whole TTL the lease has expired as far as this client can
know, so ``LOST`` is emitted then already; if the lease survived after all (an etcd restart extends leases),
the next successful refresh emits ``RESTORED``.

Ownership (docs/decisions/session-ownership.md, :mod:`discovery_etcd.ownership`): a key is ours while it is on
our lease. After every refresh the group checks that in one transaction per 128 keys: a key gone (an operator
deleted it) is written back (``LOST`` ``REMOVED`` → ``RESTORED``), a key on another lease (another registrant
registered the id) is given up (``LOST`` ``TAKEN_OVER``) and never written or deleted again. Updates, deletes
and write-backs are transactions that hold only while the key is ours (or absent).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from discovery.core.backend import LostReason, RegistrationState, StateListener
from discovery.core.errors import BackendUnavailableError, DiscoveryError, NotRegisteredError
from discovery.core.tasks import KeyLocks, cancel_and_wait
from discovery_etcd import ownership
from discovery_etcd.connection import EndpointPool, is_lease_not_found

log = logging.getLogger("discovery.backends.etcd.keepalive")

#: etcd's default --max-txn-ops.
MAX_TXN_OPS = 128


@dataclass(slots=True)
class LeasedKey:
    """One key this client keeps alive, with its value and the registration's state listener."""

    key: bytes
    value: bytes
    on_state: StateListener


class LeaseGroupRetired(NotRegisteredError):
    """The group was emptied and its lease is being revoked: the key belongs in a fresh group."""


class PutBatcher:
    """Puts of keys on leases, many per round trip (group commit).

    A put asked for while none is in flight is sent at once, alone; puts asked for while one is in flight wait and
    go together in the next round trip, as one transaction per lease (at most :data:`MAX_TXN_OPS` puts). One
    registrant waits for nothing; N concurrent ones share round trips. Keys in one transaction are distinct: each
    caller holds its key's lock (:class:`KeyLocks`). A failed transaction (the lease is gone, the connection) fails
    every put in it with the same error, as the puts would have failed one by one.
    """

    def __init__(self, pool: EndpointPool) -> None:
        self._pool = pool
        self._queued: list[tuple[bytes, bytes, int | None, asyncio.Future[None]]] = []
        self._in_flight = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def put(self, key: bytes, value: bytes, lease_id: int | None) -> None:
        """Write ``key`` on ``lease_id``; raises what the write raised."""
        if not self._in_flight and not self._queued:
            self._in_flight = True
            try:
                await self._pool.call("write a registration", lambda client: client.put(key, value, lease=lease_id))
            finally:
                self._sent()
            return
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((key, value, lease_id, written))
        await written

    def _sent(self) -> None:
        self._in_flight = False
        self._queued = [entry for entry in self._queued if not entry[3].cancelled()]
        if not self._queued:
            return
        lease_id = self._queued[0][2]
        batch = [entry for entry in self._queued if entry[2] == lease_id][:MAX_TXN_OPS]
        sent = {id(entry) for entry in batch}
        self._queued = [entry for entry in self._queued if id(entry) not in sent]
        self._in_flight = True
        task = asyncio.get_running_loop().create_task(self._commit(batch, lease_id), name="etcd-puts")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _commit(
        self, batch: list[tuple[bytes, bytes, int | None, asyncio.Future[None]]], lease_id: int | None
    ) -> None:
        async def commit(client: Any) -> None:
            puts = [client.transactions.put(key, value, lease=lease_id) for key, value, _, _ in batch]
            await client.transaction(compare=[], success=puts, failure=[])

        try:
            await self._pool.call("write registrations", commit)
        except BaseException as error:
            for _, _, _, written in batch:
                if not written.done():
                    written.set_exception(error)
            if not isinstance(error, Exception):
                raise
        else:
            for _, _, _, written in batch:
                if not written.done():
                    written.set_result(None)
        finally:
            self._sent()


def _retry_keepalive(error: BaseException) -> bool:
    return isinstance(error, BackendUnavailableError)


class LeaseGroup:
    """One lease of one TTL and every key of this client attached to it."""

    def __init__(self, pool: EndpointPool, ttl: int) -> None:
        self.ttl = ttl
        self._pool = pool
        self._lease_id: int | None = None
        self._keys: dict[bytes, LeasedKey] = {}
        # Serialises lease grants, re-grants (with their re-write of every key), retiring and removing a key from
        # the group; puts hold it only to read the lease id, so a key deleted meanwhile is never re-put.
        self._lock = asyncio.Lock()
        # Puts in flight outside the lock: a group with writers is not empty and must not be retired.
        self._writers = 0
        self._key_locks = KeyLocks()
        self._puts = PutBatcher(pool)
        self._lost = False
        # Set from the moment a lease is known lost until every key is on the new lease.
        self._rewrite_pending = False
        self._last_refresh = time.monotonic()
        self._keepalive: asyncio.Task[None] | None = None
        self._retired = False

    @property
    def lease_id(self) -> int | None:
        """The current lease (``None`` before the first registration)."""
        return self._lease_id

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    async def put(self, leased: LeasedKey) -> None:
        """Write a key attached to this group's lease (granting the lease first if needed).

        The group lock covers only granting/reading the lease id and counting this writer in (so the group is
        not retired under it); the put itself runs unlocked, so registrations sharing a TTL are concurrent.
        Writes of one key stay ordered (a put and a delete of the same key never overlap).
        """
        async with self._key_locks.hold(leased.key):
            async with self._lock:
                if self._retired:
                    raise LeaseGroupRetired("this lease group was emptied and is being revoked")
                if self._lease_id is None:
                    await self._grant_locked()
                lease_id = self._lease_id
                self._writers += 1
            try:
                await self._put_on(leased, lease_id)
            except DiscoveryError as error:
                if not is_lease_not_found(error.__cause__ or error):
                    raise
                # The lease vanished before the keepalive noticed: recover the others (unless a concurrent
                # writer already did), then write this one.
                async with self._lock:
                    if self._lease_id == lease_id:
                        await self._recover_locked()
                    await self._put_on(leased, self._lease_id)
                    self._keys[leased.key] = leased
            else:
                self._keys[leased.key] = leased
                if self._lease_id != lease_id and self._lease_id is not None:
                    # A re-grant finished while this put was in flight: its re-write did not include this key.
                    async with self._lock:
                        await self._put_on(leased, self._lease_id)
            finally:
                self._writers -= 1
        self._ensure_keepalive()

    async def retire_if_empty(self) -> bool:
        """Retire the group if no key uses it; checked under the write lock, so a put waiting for the lock is
        refused (and goes to a fresh group) instead of landing on a lease about to be revoked.
        """
        async with self._lock:
            if self._keys or self._writers:
                return False
            self._retired = True
            return True

    async def update(self, leased: LeasedKey) -> None:
        """Rewrite a key this group holds, only while it is still ours.

        Gone (an operator deleted it): written back, ``LOST`` (``REMOVED``) → ``RESTORED``. On another lease:
        given up, ``LOST`` (``TAKEN_OVER``), and :class:`NotRegisteredError` with nothing written.
        """
        async with self._key_locks.hold(leased.key):
            async with self._lock:
                if leased.key not in self._keys:
                    raise NotRegisteredError("this key is not held by this lease group")
                self._keys[leased.key] = leased  # the next re-grant writes the new value
                lease_id = self._lease_id
                if lease_id is None or self._rewrite_pending:
                    # The lease is lost and its keys not yet written back (the server did not answer the last
                    # attempt): nothing the server holds would show this value yet, so the call cannot succeed.
                    raise BackendUnavailableError(
                        "the registration's lease is lost and not yet restored; the new value is written with it"
                    )
                self._writers += 1
            try:
                outcome = await self._pool.call(
                    "update a registration",
                    lambda client: ownership.transact(
                        client,
                        [ownership.owned_by(leased.key, lease_id)],
                        [ownership.put_op(leased.key, leased.value, lease_id)],
                        [ownership.read_op(leased.key)],
                    ),
                )
                if not outcome.succeeded:
                    await self._settle_unowned(leased, outcome.read[0], lease_id)
            finally:
                self._writers -= 1
        if self._keys.get(leased.key) is not leased:
            raise NotRegisteredError("the instance id was taken over by another registrant")

    async def delete(self, key: bytes) -> None:
        """Delete a key if it is still ours, and stop keeping it alive (missing keys are fine)."""
        async with self._key_locks.hold(key):
            # Popped under the group lock so that no re-grant re-puts it; deleted outside it.
            async with self._lock:
                self._keys.pop(key, None)
                lease_id = self._lease_id
            if lease_id is None:
                return
            await self._pool.call(
                "delete a registration",
                lambda client: ownership.transact(
                    client, [ownership.owned_by(key, lease_id)], [ownership.delete_op(key)], []
                ),
            )

    def leased(self, key: bytes) -> LeasedKey | None:
        """The record of a key this group keeps alive."""
        return self._keys.get(key)

    def adopt(self, key: bytes, value: bytes) -> None:
        """Someone else rewrote a key this group keeps alive: re-put ``value``, not ours, after a lost lease."""
        leased = self._keys.get(key)
        if leased is not None:
            self._keys[key] = LeasedKey(key, value, leased.on_state)

    def forget(self, key: bytes) -> None:
        """Stop keeping a key alive without deleting it (it moved to another lease)."""
        self._keys.pop(key, None)

    async def revoke(self) -> None:
        """Stop the keepalive and revoke the lease, which deletes every key attached to it."""
        await self.stop()
        lease_id, self._lease_id = self._lease_id, None
        self._keys.clear()
        if lease_id is not None:
            await self._pool.call("revoke a lease", lambda client: client.revoke_lease(lease_id))

    async def stop(self) -> None:
        """Stop the keepalive loop, leaving the lease to expire on its own."""
        task, self._keepalive = self._keepalive, None
        if task is not None:
            await cancel_and_wait(task)

    def _ensure_keepalive(self) -> None:
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = asyncio.get_running_loop().create_task(
                self._keepalive_loop(), name=f"etcd-keepalive-ttl{self.ttl}"
            )

    async def _grant_locked(self) -> None:
        lease = await self._pool.call("grant a lease", lambda client: client.lease(self.ttl))
        self._lease_id = int(lease.id)
        self._last_refresh = time.monotonic()

    async def _put_on(self, leased: LeasedKey, lease_id: int | None) -> None:
        await self._puts.put(leased.key, leased.value, lease_id)

    async def _put_all_locked(self) -> None:
        # One transaction per chunk: watchers see the whole set come back at one revision, not key by key. Each
        # key is written only while absent: one that another registrant wrote meanwhile is theirs now.
        lease_id = self._lease_id
        assert lease_id is not None
        records = list(self._keys.values())
        for start in range(0, len(records), MAX_TXN_OPS):
            chunk = records[start : start + MAX_TXN_OPS]

            async def put_chunk(client: Any, chunk: list[LeasedKey] = chunk) -> ownership.Outcome:
                return await ownership.transact(
                    client,
                    [ownership.absent(leased.key) for leased in chunk],
                    [ownership.put_op(leased.key, leased.value, lease_id) for leased in chunk],
                    [ownership.read_op(leased.key) for leased in chunk],
                )

            outcome = await self._pool.call("re-write registrations", put_chunk)
            if outcome.succeeded:
                continue
            for leased, state in zip(chunk, outcome.read, strict=True):
                if state.lease is None:
                    await self._put_if_absent(leased, lease_id)
                elif state.lease != lease_id:
                    self._give_up(leased)

    async def _put_if_absent(self, leased: LeasedKey, lease_id: int) -> bool:
        """Write a key back unless someone else wrote it meanwhile (then it is theirs: given up). True if ours."""
        outcome = await self._pool.call(
            "write a registration back",
            lambda client: ownership.transact(
                client,
                [ownership.absent(leased.key)],
                [ownership.put_op(leased.key, leased.value, lease_id)],
                [ownership.read_op(leased.key)],
            ),
        )
        if outcome.succeeded or outcome.read[0].lease == lease_id:
            return True
        self._give_up(leased)
        return False

    async def _settle_unowned(self, leased: LeasedKey, state: ownership.KeyState, lease_id: int) -> None:
        """A key found not on our lease: write it back if it is gone, give it up if another lease holds it."""
        if self._keys.get(leased.key) is not leased:
            return  # deregistered or replaced meanwhile
        if state.lease is not None:
            if state.lease != lease_id:
                self._give_up(leased)
            return
        log.warning("etcd key %r was deleted by someone else while our lease lives; writing it back", leased.key)
        _notify(leased, RegistrationState.LOST, LostReason.REMOVED)
        try:
            ours = await self._put_if_absent(leased, lease_id)
        except DiscoveryError as error:
            if not is_lease_not_found(error.__cause__ or error):
                raise
            async with self._lock:  # the lease went too: the re-grant writes this key with the others
                if self._lease_id == lease_id:
                    await self._recover_locked()
            return
        if ours:
            _notify(leased, RegistrationState.RESTORED)

    def _give_up(self, leased: LeasedKey) -> None:
        """Another registrant's lease holds the key: it owns the id now. Never write or delete it again."""
        if self._keys.get(leased.key) is not leased:
            return
        del self._keys[leased.key]
        log.warning("etcd key %r was taken over by another registrant", leased.key)
        _notify(leased, RegistrationState.LOST, LostReason.TAKEN_OVER)

    async def _verify_owned(self) -> None:
        """Check that every key of the group is still on our lease (one transaction per chunk), and settle the
        ones that are not.
        """
        lease_id = self._lease_id
        records = list(self._keys.values())
        if lease_id is None or not records:
            return
        for start in range(0, len(records), MAX_TXN_OPS):
            chunk = records[start : start + MAX_TXN_OPS]

            async def check_chunk(client: Any, chunk: list[LeasedKey] = chunk) -> ownership.Outcome:
                return await ownership.transact(
                    client,
                    [ownership.owned_by(leased.key, lease_id) for leased in chunk],
                    [],
                    [ownership.read_op(leased.key) for leased in chunk],
                )

            outcome = await self._pool.call("check registrations", check_chunk, timeout=max(self.ttl / 3, 0.5))
            if outcome.succeeded:
                continue
            for leased, state in zip(chunk, outcome.read, strict=True):
                if state.lease == lease_id or self._lease_id != lease_id:
                    continue
                async with self._key_locks.hold(leased.key):
                    await self._settle_unowned(leased, state, lease_id)

    async def _recover_locked(self) -> None:
        self._mark_lost()
        self._rewrite_pending = True
        await self._grant_locked()
        await self._put_all_locked()
        self._rewrite_pending = False
        self._mark_restored()

    def _mark_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        log.warning("etcd lease %s (ttl %ss) lost; %d registration(s) affected", self._lease_id, self.ttl, len(self))
        self._emit(RegistrationState.LOST, LostReason.EXPIRED)

    def _mark_restored(self) -> None:
        if not self._lost:
            return
        self._lost = False
        log.info("etcd lease %s (ttl %ss) restored", self._lease_id, self.ttl)
        self._emit(RegistrationState.RESTORED)

    def _emit(self, state: RegistrationState, reason: LostReason | None = None) -> None:
        for leased in list(self._keys.values()):
            _notify(leased, state, reason)

    def _cadence(self) -> float:
        return self.ttl / 3 * random.uniform(0.8, 1.0)

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cadence())
            retrying = AsyncRetrying(
                retry=retry_if_exception(_retry_keepalive),
                wait=wait_random_exponential(multiplier=0.05, max=self.ttl / 6),
                before_sleep=self._note_failure,
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._refresh_once()
            except Exception:  # not a connection problem (e.g. permissions): keep trying at the normal pace
                log.exception("etcd lease keepalive failed")

    def _note_failure(self, state: RetryCallState) -> None:
        if time.monotonic() - self._last_refresh > self.ttl:
            self._mark_lost()

    async def _refresh_once(self) -> None:
        lease_id = self._lease_id
        if lease_id is None:
            return
        if not self._rewrite_pending:
            reply = await self._pool.call(
                "refresh a lease", lambda client: client.refresh_lease(lease_id), timeout=max(self.ttl / 3, 0.5)
            )
            if reply is not None and int(reply.TTL) > 0:
                self._last_refresh = time.monotonic()
                self._mark_restored()
                await self._verify_owned()
                return
        async with self._lock:
            if self._lease_id == lease_id or self._rewrite_pending:
                await self._recover_locked()


def _notify(leased: LeasedKey, state: RegistrationState, reason: LostReason | None = None) -> None:
    try:
        leased.on_state(state, reason)
    except Exception:  # a listener's bug must not stop the keepalive
        log.exception("registration state listener failed")


def lease_ttl(ttl: float) -> int:
    """etcd leases have whole-second TTLs: round a requested TTL up."""
    return max(1, int(-(-ttl // 1)))
