"""Ownership-checked writes: etcd transactions that compare a key's lease.

The last registrant owns an instance id (docs/decisions/session-ownership.md). A key is ours while it is attached
to our lease: an update or delete runs in a transaction comparing the key's lease with ours, and a write-back after
a loss runs only while the key is absent, so an old owner never overwrites or deletes a newcomer's key. aetcd's
transaction builder has no lease comparison, so these build the gRPC messages themselves (as the watch stream
does, see docs/decisions/etcd-watch-stream.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aetcd import rpc


@dataclass(frozen=True, slots=True)
class KeyState:
    """What a transaction's failure branch read of one key: ``lease`` is ``None`` when the key is absent."""

    key: bytes
    lease: int | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A transaction's result: whether its comparisons held, the store revision, and the keys it read."""

    succeeded: bool
    revision: int
    read: tuple[KeyState, ...]


def owned_by(key: bytes, lease_id: int) -> Any:
    """Compare: ``key`` is attached to ``lease_id`` (false when the key is absent)."""
    return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.LEASE, lease=lease_id)


def absent(key: bytes) -> Any:
    """Compare: ``key`` does not exist."""
    return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION, version=0)


def put_op(key: bytes, value: bytes, lease_id: int) -> Any:
    """Operation: put ``key`` on ``lease_id``."""
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease_id))


def delete_op(key: bytes) -> Any:
    """Operation: delete ``key``."""
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def read_op(key: bytes) -> Any:
    """Operation: read ``key`` (without its value: only its lease matters here)."""
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key, keys_only=True))


async def transact(client: Any, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any]) -> Outcome:
    """Run one transaction on ``client`` (an aetcd client) and report what its read operations saw."""
    request = rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
    response = await client.kvstub.Txn(request, metadata=client.metadata)
    read: list[KeyState] = []
    branch = success if response.succeeded else failure
    for op, reply in zip(branch, response.responses, strict=True):
        if op.WhichOneof("request") != "request_range":
            continue
        kvs = reply.response_range.kvs
        read.append(KeyState(bytes(op.request_range.key), int(kvs[0].lease) if kvs else None))
    return Outcome(bool(response.succeeded), int(response.header.revision), tuple(read))
