"""One ADS stream (state of the world): what the client subscribed to, what it was sent, what it acknowledged.

Rules, each held by a test in ``tests/xds/``:

* The first request of each type on a stream is answered as soon as its resources are known, whatever
  ``version_info`` it carries: a client reconnecting (to a restarted or another replica) reports the version it
  had, and a server that skips a request whose version looks current leaves that client stale for ever.
* Listener and Cluster replies hold every subscribed resource; none is sent while any of them is pending.
  Route and endpoint replies hold what changed.
* Every reply has a new version (unique across restarts: it starts with the server's boot id) and a nonce;
  a request whose nonce is not the latest reply's is stale and ignored.
* A NACK (``error_detail`` set) is logged with the client's node id and error, and the rejected content is
  not sent again: the next reply of that type goes out only when its content changes, under a new version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from discovery.xds.model import PENDING, XdsModel
from discovery.xds.resources import SHORT_TYPE_NAMES, STATE_OF_THE_WORLD_TYPES, TYPE_ORDER, Resource

log = logging.getLogger("discovery.xds")

MAX_LOGGED_ERROR = 500


@dataclass
class TypeState:
    """The stream's state for one resource type."""

    names: frozenset[str] = frozenset()
    sent: dict[str, bytes] = field(default_factory=dict)
    answered: frozenset[str] | None = None
    nonce: str | None = None
    version: str | None = None
    acked_version: str | None = None
    responses: int = 0
    nacks: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a server knows of one client stream (for operators and tests)."""

    node_id: str
    peer: str
    subscribed: dict[str, frozenset[str]]
    acked: dict[str, str | None]
    sent: dict[str, str | None]
    responses: dict[str, int]
    nacks: dict[str, tuple[tuple[str, str], ...]]


class AdsStream:
    """The state machine of one stream; :meth:`handle` takes requests, :meth:`replies` gives what to send."""

    def __init__(self, model: XdsModel, next_version: Callable[[], str], peer: str) -> None:
        self.node_id = ""
        self.peer = peer
        self._model = model
        self._next_version = next_version
        self._types: dict[str, TypeState] = {}
        self._dirty: set[str] = set()
        self.wake = asyncio.Event()

    # -- Subscriber ----------------------------------------------------------------------------------------------

    def resources_changed(self, type_url: str) -> None:
        """Called by the model when a watched resource of this type changed."""
        self._dirty.add(type_url)
        self.wake.set()

    # -- requests ------------------------------------------------------------------------------------------------

    async def handle(self, request: Any) -> None:
        """Take one DiscoveryRequest."""
        type_url = request.type_url
        if type_url not in SHORT_TYPE_NAMES:
            log.debug("stream %s asked for unsupported type %s", self.peer, type_url[:100])
            return
        if not self.node_id and request.HasField("node"):
            self.node_id = request.node.id[:200]
        state = self._types.setdefault(type_url, TypeState())
        nonce = request.response_nonce
        if state.nonce is not None and nonce and nonce != state.nonce:
            return  # about an older reply; the client's answer to the latest one follows
        if state.nonce is not None and nonce == state.nonce:
            if request.HasField("error_detail"):
                message = request.error_detail.message[:MAX_LOGGED_ERROR]
                state.nacks.append((state.version or "", message))
                log.warning("client %r (%s) rejected %s version %s: %s", self.node_id, self.peer,
                            SHORT_TYPE_NAMES[type_url], state.version, message)
            else:
                state.acked_version = request.version_info
        names = frozenset(request.resource_names)
        if names != state.names:
            added, removed = names - state.names, state.names - names
            state.names = names
            for name in removed:
                state.sent.pop(name, None)
            for name in added:
                self._model.watch(type_url, name, self)
            for name in removed:
                await self._model.unwatch(type_url, name, self)
        self.resources_changed(type_url)

    async def close(self) -> None:
        """Stop watching everything this stream subscribed to."""
        for type_url, state in self._types.items():
            for name in state.names:
                await self._model.unwatch(type_url, name, self)
            state.names = frozenset()

    # -- replies -------------------------------------------------------------------------------------------------

    def replies(self) -> list[Any]:
        """The DiscoveryResponses due now, in ADS order (clusters, endpoints, listeners, routes)."""
        due = []
        for type_url in TYPE_ORDER:
            if type_url in self._dirty:
                self._dirty.discard(type_url)
                response = self._reply(type_url)
                if response is not None:
                    due.append(response)
        return due

    def _reply(self, type_url: str) -> Any:
        state = self._types.get(type_url)
        if state is None or not state.names:
            return None  # wildcard subscriptions are not served: every name is derived from a target
        found = {name: self._model.lookup(type_url, name) for name in state.names}
        if type_url in STATE_OF_THE_WORLD_TYPES:
            if any(value is PENDING for value in found.values()):
                return None
            chosen = {n: v for n, v in found.items() if isinstance(v, Resource)}
            digests = {n: r.digest for n, r in chosen.items()}
            if state.answered == state.names and digests == state.sent:
                return None
            state.sent = digests
        else:
            chosen = {n: v for n, v in found.items() if isinstance(v, Resource) and state.sent.get(n) != v.digest}
            if not chosen:
                return None
            state.sent.update((n, r.digest) for n, r in chosen.items())
        version = self._next_version()
        state.answered = state.names
        state.nonce = state.version = version
        state.responses += 1
        return discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=version,
            resources=[chosen[n].packed for n in sorted(chosen)],
        )

    def info(self) -> StreamInfo:
        """A copy of what is known of this stream."""
        short = SHORT_TYPE_NAMES
        return StreamInfo(
            node_id=self.node_id,
            peer=self.peer,
            subscribed={short[t]: s.names for t, s in self._types.items()},
            acked={short[t]: s.acked_version for t, s in self._types.items()},
            sent={short[t]: s.version for t, s in self._types.items()},
            responses={short[t]: s.responses for t, s in self._types.items()},
            nacks={short[t]: tuple(s.nacks) for t, s in self._types.items()},
        )
