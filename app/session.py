"""JSON-protocol sessions: the live state of one connection, and the registry that keeps them resumable.

A session outlives its connection: on disconnect its channel positions go to the registry for
``session_ttl_s``, and a ``connection_init`` with ``resume`` takes them back (PROTOCOL.md 2.3).
Nothing here touches a socket: outbound frames go to a ``FrameSink``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

from crdt.broker import StreamPosition
from crdt.errors import CrdtError, SlowConsumer
from crdt.frame import OutFrame
from crdt.peer import FrameSink
from crdt.room import Room

from .auth import Principal
from .codec import Delivery, Format, encode, server_message
from .errors import AppError, wire_code_for
from .hub import Subscription

log = logging.getLogger(__name__)


def new_session_id() -> str:
    return f"sess_{secrets.token_urlsafe(12)}"


def new_trace_id() -> str:
    return secrets.token_hex(16)


UNKNOWN_POSITION = StreamPosition(-1, "")  # no replay is possible from here (see ``claim_orphan``)


@dataclass(frozen=True, slots=True)
class SessionState:
    """What survives a disconnect: who owns the session and where each of its channels stood."""

    session_id: str
    user_id: str
    channels: dict[str, StreamPosition]
    detached_at: float


class SessionRegistry(Protocol):
    """Detached sessions waiting to be resumed (``app/cluster_redis.py`` has the cluster-wide one)."""

    async def park(self, state: SessionState) -> None:
        """Keep ``state`` resumable for the registry's TTL."""
        ...

    async def take(self, session_id: str, user_id: str) -> SessionState | None:
        """Remove and return the parked session if it exists, is unexpired and belongs to ``user_id``."""
        ...

    async def mark_live(
        self, session_id: str, user_id: str, node_id: str, channels: Iterable[str] = ()
    ) -> None:
        """Record that ``node_id`` holds the connected session and its channels (so another node can
        ask for it, or claim it if ``node_id`` dies)."""
        ...

    async def mark_gone(self, session_id: str) -> None:
        """The session is no longer connected anywhere (it was parked, or taken over)."""
        ...

    async def live_owner(self, session_id: str, user_id: str) -> str | None:
        """The node holding ``user_id``'s connected session ``session_id``, if any is known."""
        ...

    async def claim_orphan(self, session_id: str, user_id: str) -> SessionState | None:
        """Take over the session of a node that died while holding it (atomically, once).

        Returns its channels with ``UNKNOWN_POSITION`` (the dead node's delivery positions are lost:
        only offsets the client sends can be replayed), or None when the holder is alive or unknown.
        """
        ...


class LocalSessionRegistry:
    """Parked sessions in process memory.

    Args:
        ttl_s: how long a detached session stays resumable.
        clock: wall-clock seconds (tests pass a fake one).
    """

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.time) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._parked: dict[str, SessionState] = {}

    async def park(self, state: SessionState) -> None:
        """See ``SessionRegistry.park``."""
        self._expire()
        self._parked[state.session_id] = state

    async def take(self, session_id: str, user_id: str) -> SessionState | None:
        """See ``SessionRegistry.take``."""
        self._expire()
        state = self._parked.get(session_id)
        if state is None or state.user_id != user_id:
            return None
        del self._parked[session_id]
        return state

    async def mark_live(
        self, session_id: str, user_id: str, node_id: str, channels: Iterable[str] = ()
    ) -> None:
        """See ``SessionRegistry.mark_live``: one node, nothing to record."""

    async def mark_gone(self, session_id: str) -> None:
        """See ``SessionRegistry.mark_gone``."""

    async def live_owner(self, session_id: str, user_id: str) -> str | None:
        """See ``SessionRegistry.live_owner``: never another node."""
        return None

    async def claim_orphan(self, session_id: str, user_id: str) -> SessionState | None:
        """See ``SessionRegistry.claim_orphan``: a single node has no other node's sessions."""
        return None

    def _expire(self) -> None:
        deadline = self._clock() - self._ttl_s
        for session_id in [sid for sid, s in self._parked.items() if s.detached_at < deadline]:
            del self._parked[session_id]


@dataclass(slots=True)
class Seat:
    """A session's hold on one canvas: the room lease, presence, and its awareness identity."""

    canvas_id: str
    room: Room
    stack: AsyncExitStack
    channels: set[str] = field(default_factory=set)
    client_id: int = field(default_factory=lambda: secrets.randbits(31) | 1)
    clock: int = 0


@dataclass(slots=True)
class PendingAck:
    """A ``canvas_update`` whose ``ack`` waits for durability and for its publications' offsets."""

    message_id: str | int
    trace_id: str
    log_seq: int | None
    publications: list[asyncio.Future[Any]]


class Session:
    """The live side of one JSON-protocol connection.

    Must be created inside a running event loop. Every send is synchronous and never blocks: a
    connection whose backlog is over its cap is failed with ``SlowConsumer`` (and aborted).

    Args:
        principal: the authenticated user (replaced by ``token_refresh``).
        fmt: the connection's encoding.
        sink: where frames go.
    """

    def __init__(self, principal: Principal, fmt: Format, sink: FrameSink) -> None:
        self.session_id = new_session_id()
        self.principal = principal
        self.fmt = fmt
        self.sink = sink
        self.compact_cursors = False
        self.initialised = False
        self.resumable = True  # until the first message that did something
        self.subscriptions: dict[str, Subscription] = {}
        self.seats: dict[str, Seat] = {}
        self.acks: asyncio.Queue[PendingAck] = asyncio.Queue()
        self.ai_busy = False
        self.token_warned = False
        self.last_frame = asyncio.get_running_loop().time()  # loop time of the last inbound frame
        self.error: CrdtError | AppError | None = None
        self.timers_changed = asyncio.Event()
        self.detached = asyncio.Event()
        self._failed: asyncio.Future[CrdtError | AppError] = asyncio.get_running_loop().create_future()

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    # -- outbound ------------------------------------------------------------------------------

    def send(self, kind: str, data: dict[str, Any], trace_id: str | None = None, **top: Any) -> None:
        """Send a direct (non-channel) message to this connection."""
        message = server_message(kind, self.session_id, data, trace_id or new_trace_id(), **top)
        self.write(encode(message, self.fmt))

    def send_error(
        self,
        error: CrdtError | AppError,
        *,
        original_message_id: str | int | None = None,
        trace_id: str | None = None,
        channel: str | None = None,
    ) -> None:
        """Send an ``error``: code and message in ``data`` and mirrored at top level (seed format)."""
        code = wire_code_for(error)
        text = str(error) or code.lower()
        data: dict[str, Any] = {"code": code, "message": text, "original_message_id": original_message_id}
        if channel is not None:
            data["channel"] = channel
        self.send("error", data, trace_id, code=code, message=text, original_message_id=original_message_id)

    def send_delivery(self, delivery: Delivery) -> None:
        """Send a channel publication (see ``hub.Receiver``)."""
        self.write(delivery.frame(self.fmt, compact_cursors=self.compact_cursors))

    def write(self, frame: OutFrame) -> None:
        if self.error is None and not self.sink.write(frame):
            self.fail(SlowConsumer("outbound backlog over the cap"))

    # -- lifetime ------------------------------------------------------------------------------

    def fail(self, error: CrdtError | AppError) -> None:
        """End the connection with ``error`` (first error wins); the endpoint closes the socket."""
        if self.error is not None:
            return
        self.error = error
        if isinstance(error, SlowConsumer):
            log.warning(
                "slow consumer evicted", extra={"session_id": self.session_id, "user_id": self.user_id}
            )
            self.sink.evict(error)
        self._failed.set_result(error)

    async def wait_failed(self) -> CrdtError | AppError:
        return await asyncio.shield(self._failed)

    def state(self) -> SessionState:
        """The resumable part of this session, as of now."""
        channels = {name: sub.position for name, sub in self.subscriptions.items()}
        return SessionState(self.session_id, self.user_id, channels, time.time())
