"""Cross-node relay of Yjs document updates through the broker (DESIGN.md "Scale-out picture").

``DocumentRelay`` keeps the live documents of one canvas on several nodes converged: every update
this node accepts is published on the canvas's internal channel (``keys.doc_channel``), and every
other node's update is applied locally with ``Room.apply_remote``. Imports nothing from ``app`` or
``storage``; the broker and the store come in as the ``Broker`` and ``DocumentStore`` protocols.

Delivery: publications are applied in offset order. A missed offset is replayed from the broker's
history; when that history is gone (trimmed, new epoch) or the broker was unreachable, the node does
a full state exchange: it reloads the canvas from storage (what every node committed) and asks the
nodes holding the canvas for what they have beyond its state vector (what they hold in memory).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import IntEnum
from types import TracebackType
from typing import TypeVar

from pycrdt import Doc, merge_updates

from . import protocol
from .broker import Broker, HistoryUnavailable, Publication, StreamPosition
from .errors import BadMessage, RoomClosed
from .keys import doc_channel
from .room import Change, Origin, Room, RoomManager
from .store import DocumentStore

log = logging.getLogger(__name__)
T = TypeVar("T")

ENVELOPE_VERSION = 1
_COALESCE_MAX_BYTES = 1024 * 1024  # largest merge of queued updates into one envelope
_REPAIR_CONCURRENCY = 16  # channels repaired at once (replays, storage reloads)


class EnvelopeKind(IntEnum):
    """What a document envelope carries."""

    UPDATE = 1  # a Yjs update the sender accepted (and stores): apply it
    SYNC_REQUEST = 2  # the sender's state vector: nodes holding the canvas reply with what it lacks
    SYNC_REPLY = 3  # the Yjs diff against a requester's state vector, for ``target`` only
    RESYNC = 4  # the sender could not publish some of its updates: holders do a full state exchange
    CLOSED = 5  # the canvas was deleted on the sender: holders close their rooms (``RoomClosed``)


@dataclass(frozen=True, slots=True)
class DocEnvelope:
    """One message on a canvas's document channel.

    Attributes:
        kind: what ``payload`` is.
        node_id: the publishing node; a node drops its own envelopes.
        payload: the update (UPDATE), state vector (SYNC_REQUEST), diff (SYNC_REPLY); empty otherwise.
        target: the node a SYNC_REPLY answers (others ignore it); empty otherwise.
    """

    kind: EnvelopeKind
    node_id: str
    payload: bytes
    target: str = ""


def encode_envelope(envelope: DocEnvelope) -> bytes:
    """``version, kind, varString node_id, varString target, payload`` (the payload runs to the end)."""
    node = envelope.node_id.encode("utf-8")
    target = envelope.target.encode("utf-8")
    return b"".join(
        (
            bytes((ENVELOPE_VERSION, envelope.kind)),
            protocol.write_var_uint(len(node)),
            node,
            protocol.write_var_uint(len(target)),
            target,
            envelope.payload,
        )
    )


def decode_envelope(data: bytes) -> DocEnvelope:
    """Inverse of ``encode_envelope``.

    Raises:
        BadMessage: not an envelope of a version and kind this node knows.
    """
    if len(data) < 2 or data[0] != ENVELOPE_VERSION:
        raise BadMessage(f"expected a version {ENVELOPE_VERSION} document envelope, got {data[:2].hex()!r}")
    try:
        kind = EnvelopeKind(data[1])
    except ValueError as exc:
        raise BadMessage(f"unknown document envelope kind {data[1]}") from exc
    pos = 2
    strings = []
    for _ in range(2):
        length, pos = _read_var_uint(data, pos)
        end = pos + length
        if end > len(data):
            raise BadMessage("document envelope string runs past the end")
        try:
            strings.append(data[pos:end].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise BadMessage("document envelope string is not UTF-8") from exc
        pos = end
    return DocEnvelope(kind, strings[0], data[pos:], strings[1])


def _read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 56, 7):
        if pos >= len(data):
            raise BadMessage("truncated varUint in document envelope")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise BadMessage("varUint too long in document envelope")


@dataclass(slots=True)
class RelayStats:
    """Counters for tests, benchmarks and metrics."""

    published: int = 0  # envelopes this node published
    coalesced: int = 0  # queued updates merged into another one's envelope (a backlog was draining)
    publish_failures: int = 0
    applied: int = 0  # other nodes' updates applied to a room
    replies_applied: int = 0  # sync replies addressed to this node, applied
    own_dropped: int = 0  # own envelopes received back and dropped
    duplicates: int = 0  # publications at or below the channel's offset
    gaps: int = 0  # missed offsets detected
    resets: int = 0  # losses the broker reported (``on_reset``)
    replayed: int = 0  # publications read from history
    load_requests: int = 0  # sync requests sent after a room load
    exchanges: int = 0  # full state exchanges (storage reload + sync request)
    sync_replies: int = 0  # answers to other nodes' sync requests
    overflows: int = 0  # times a canvas's backlog was dropped for a RESYNC
    loaded_pending: int = 0  # publications buffered during a room load and applied after it


@dataclass(eq=False, slots=True)
class _DocChannel:
    """This node's view of one canvas's document channel (one per loaded room)."""

    canvas_id: str
    name: str
    room: Room | None = None  # set once the room has loaded
    position: StreamPosition | None = None  # the last publication applied (None until subscribed)
    pending: deque[Publication] = field(default_factory=deque)  # received, not yet applied
    subscribed: bool = False
    replaying: bool = False  # behind a gap: read history, then the pending publications
    reload: bool = False  # re-read the canvas from storage
    request: bool = False  # publish a sync request
    stalled_at: int | None = None  # stream offset seen by the previous periodic check
    closed: bool = False


@dataclass(eq=False, slots=True)
class _Outbound:
    canvas_id: str
    payload: bytes  # the encoded envelope
    update: bytes | None = None  # an UPDATE's Yjs update, for coalescing


class DocumentRelay:
    """One node's relay of document updates to and from the other nodes.

    Use as an async context manager, entered after the ``RoomManager`` (and the broker) and left before
    them. It registers itself on the manager: ``before_load`` subscribes to a canvas's channel before
    its room reads the store (so nothing published during the load is missed), ``loaded`` applies what
    arrived meanwhile and asks the other nodes for their in-memory state, ``unloaded`` unsubscribes,
    ``deleting`` tells the other nodes to close the canvas's room, and the change observer publishes
    every PEER and SERVER change.

    Guarantees: updates a node accepted reach every node holding the canvas, each publisher's updates in
    the order it accepted them; nothing is lost while the broker is down (a bounded backlog, then a
    full state exchange). Each update is stored only by the node that accepted it: relayed updates are
    applied with ``Room.apply_remote``, which does not log. Never awaits on the fan-out path: the
    change observer queues, one publisher task publishes in queue order.

    Args:
        rooms: this node's rooms; its ``node_id`` goes into every envelope.
        broker: channel streams shared by the nodes.
        store: the document store, for reloads during a full state exchange.
        broker_timeout_s: longest wait for one broker call.
        store_timeout_s: longest wait for a storage reload.
        backlog_max_bytes: most unpublished envelope bytes kept while the broker is unreachable; past
            it, the canvas's queued updates are dropped and replaced by one RESYNC envelope.
        pending_max: most publications buffered per canvas behind a gap or a load; past it, the
            buffer is dropped and replaced by a full state exchange.
        check_interval_s: how often each channel's stream position is compared with what was applied
            (finds a lost tail publication, a new epoch, a dead subscription).
        retry_max_s: longest pause between retries of a failing broker or store call.
        coalesce_max: most queued updates of one canvas merged into one envelope when a backlog
            drains (consecutive in the queue, so the order is kept); 1 publishes each one alone.
        shutdown_timeout_s: longest wait at exit for the backlog to be published.
    """

    def __init__(
        self,
        rooms: RoomManager,
        broker: Broker,
        store: DocumentStore,
        *,
        broker_timeout_s: float = 2.0,
        store_timeout_s: float = 10.0,
        backlog_max_bytes: int = 32 * 1024 * 1024,
        pending_max: int = 10_000,
        check_interval_s: float = 2.0,
        retry_max_s: float = 1.0,
        coalesce_max: int = 256,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        self._rooms = rooms
        self._broker = broker
        self._store = store
        self.node_id = rooms.node_id
        self._timeout_s = broker_timeout_s
        self._store_timeout_s = store_timeout_s
        self._backlog_max_bytes = backlog_max_bytes
        self._pending_max = pending_max
        self._check_interval_s = check_interval_s
        self._retry_max_s = retry_max_s
        self._coalesce_max = coalesce_max
        self._shutdown_timeout_s = shutdown_timeout_s
        self._channels: dict[str, _DocChannel] = {}
        self._outbound: deque[_Outbound] = deque()
        self._outbound_bytes = 0
        self._resync: set[str] = set()  # canvases whose dropped backlog a queued RESYNC replaces
        self._unsubscribe: set[str] = set()
        self._dirty: set[str] = set()
        self._publish_wakeup = asyncio.Event()
        self._repair_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.broker_up = True  # False from a failed broker call to the next successful one
        self._eager_check = False  # a broker call failed: the next check takes any lag for a gap
        self._check_now = False
        self.stats = RelayStats()

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> DocumentRelay:
        observers = self._rooms.room_observers
        self._rooms.before_load.append(self._before_load)
        observers.loaded.append(self._on_loaded)
        observers.unloaded.append(self._on_unloaded)
        observers.changes.append(self._on_change)
        observers.deleting.append(self._on_deleting)
        for room in self._rooms.rooms():  # loaded before the relay started: subscribe and exchange
            channel = self._new_channel(room.canvas_id)
            channel.room, channel.reload, channel.request = room, True, True
            self._mark(channel)
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="relay-publisher"),
            asyncio.create_task(self._repair_loop(), name="relay-repair"),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        observers = self._rooms.room_observers
        for hooks, hook in (
            (self._rooms.before_load, self._before_load),
            (observers.loaded, self._on_loaded),
            (observers.unloaded, self._on_unloaded),
            (observers.changes, self._on_change),
            (observers.deleting, self._on_deleting),
        ):
            if hook in hooks:
                hooks.remove(hook)  # type: ignore[arg-type]
        self._closing = True
        self._publish_wakeup.set()
        publisher, repairer = self._tasks or (None, None)
        if repairer is not None:
            repairer.cancel()
        if publisher is not None:
            try:
                async with asyncio.timeout(self._shutdown_timeout_s):
                    await asyncio.shield(publisher)
            except TimeoutError:
                log.error(
                    "document relay backlog not published at shutdown",
                    extra={"node_id": self.node_id, "pending": len(self._outbound)},
                )
                publisher.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        names = {channel.name for channel in self._channels.values()} | {
            doc_channel(canvas_id) for canvas_id in self._unsubscribe
        }
        for channel in self._channels.values():
            channel.closed = True
        self._channels.clear()
        try:
            async with asyncio.timeout(self._timeout_s):
                for name in names:
                    await self._broker.unsubscribe(name)
        except Exception as exc:
            log.warning(
                "relay unsubscribe failed at shutdown", extra={"node_id": self.node_id, "error": repr(exc)}
            )

    def _new_channel(self, canvas_id: str) -> _DocChannel:
        channel = self._channels[canvas_id] = _DocChannel(canvas_id, doc_channel(canvas_id))
        return channel

    @property
    def backlog(self) -> int:
        """Envelopes queued for publication."""
        return len(self._outbound)

    # -- room hooks (called by the RoomManager) ------------------------------------------------

    async def _before_load(self, canvas_id: str) -> None:
        old = self._channels.get(canvas_id)
        if old is not None:
            old.closed = True
        channel = self._new_channel(canvas_id)
        if self.broker_up:  # while the broker is unreachable, do not hold up local loads
            try:
                await self._subscribe(channel)
                return
            except Exception as exc:
                log.error("relay subscribe failed", extra={"canvas_id": canvas_id, "error": repr(exc)})
        # serve locally; the repair loop subscribes and exchanges later
        channel.reload = channel.request = True
        self._mark(channel)

    def _on_loaded(self, room: Room) -> None:
        channel = self._channels.get(room.canvas_id)
        if channel is None or channel.closed:  # no before_load ran (the relay started later)
            channel = self._new_channel(room.canvas_id)
            channel.reload = True
        channel.room = room
        applied = self.stats.applied
        self._drain(channel)
        self.stats.loaded_pending += self.stats.applied - applied
        # Others may hold updates that are not in storage yet (uncommitted, or published before we
        # subscribed): ask every node holding the canvas for what this state vector lacks.
        if channel.subscribed:
            self.stats.load_requests += 1
            self._send(room.canvas_id, EnvelopeKind.SYNC_REQUEST, room.doc.get_state())
        else:
            channel.request = True
            self._mark(channel)

    def _on_deleting(self, canvas_id: str) -> None:
        self._send(canvas_id, EnvelopeKind.CLOSED, b"")  # other nodes close their rooms of it too

    def _on_unloaded(self, room: Room) -> None:
        channel = self._channels.get(room.canvas_id)
        if channel is None or (channel.room is not None and channel.room is not room):
            return
        channel.closed = True
        del self._channels[room.canvas_id]
        self._dirty.discard(room.canvas_id)
        self._unsubscribe.add(room.canvas_id)
        self._repair_wakeup.set()

    def _on_change(self, room: Room, change: Change) -> None:
        if change.origin is Origin.PEER or change.origin is Origin.SERVER:
            self._send(room.canvas_id, EnvelopeKind.UPDATE, change.update)

    # -- outbound ------------------------------------------------------------------------------

    def _send(self, canvas_id: str, kind: EnvelopeKind, payload: bytes, target: str = "") -> None:
        """Queue an envelope for publication; never blocks.

        Past the backlog bound, an UPDATE or SYNC_REPLY is not queued: the canvas's queued envelopes
        are dropped for one RESYNC. Requests and RESYNCs (a state vector at most) are always queued.
        """
        carries_state = kind is EnvelopeKind.UPDATE or kind is EnvelopeKind.SYNC_REPLY
        if carries_state and canvas_id in self._resync:
            return  # covered by the RESYNC that replaces this canvas's dropped backlog
        data = encode_envelope(DocEnvelope(kind, self.node_id, payload, target))
        if carries_state and self._outbound_bytes + len(data) > self._backlog_max_bytes:
            self._overflow(canvas_id)
            return
        update = payload if kind is EnvelopeKind.UPDATE else None
        self._outbound.append(_Outbound(canvas_id, data, update))
        self._outbound_bytes += len(data)
        self._publish_wakeup.set()

    def _overflow(self, canvas_id: str) -> None:
        """Replace ``canvas_id``'s queued updates and replies by one RESYNC envelope.

        Until that RESYNC is published, the canvas's updates and replies are not queued either. The
        updates stay in the live documents and in storage: every node holding the canvas answers the
        RESYNC with a full state exchange, which gets them from this node's reply or from the store.
        """
        kept = deque(
            item
            for item in self._outbound
            if item.canvas_id != canvas_id or item.payload[1] not in _STATE_KINDS
        )
        self._outbound_bytes = sum(len(item.payload) for item in kept)
        self._outbound = kept
        if canvas_id in self._resync:
            return
        self.stats.overflows += 1
        log.error(
            "relay backlog over its bound: the canvas will be resynced",
            extra={"canvas_id": canvas_id, "node_id": self.node_id, "bytes": self._backlog_max_bytes},
        )
        self._send(canvas_id, EnvelopeKind.RESYNC, b"")
        self._resync.add(canvas_id)

    async def _publish_loop(self) -> None:
        backoff = 0.05
        while True:
            if not self._outbound:
                if self._closing:
                    return
                self._publish_wakeup.clear()
                await self._publish_wakeup.wait()
                continue
            batch = self._next_batch()
            item = batch[0]
            name = doc_channel(item.canvas_id)
            payload = item.payload
            if len(batch) > 1:  # a backlog: one envelope for consecutive updates of one canvas
                merged = merge_updates(*(queued.update for queued in batch if queued.update is not None))
                payload = encode_envelope(DocEnvelope(EnvelopeKind.UPDATE, self.node_id, merged))
            try:
                await self._call(self._broker.publish(name, payload, publisher=self.node_id))
            except Exception:
                self.stats.publish_failures += 1
                if self._closing:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._retry_max_s)
                continue
            backoff = 0.05
            self.stats.published += 1
            self.stats.coalesced += len(batch) - 1
            for queued in batch:
                if self._outbound and self._outbound[0] is queued:  # not dropped by an overflow meanwhile
                    self._outbound.popleft()
                    self._outbound_bytes -= len(queued.payload)
            if item.payload[1] == EnvelopeKind.RESYNC:
                self._resync.discard(item.canvas_id)  # from now on its updates are queued again

    def _next_batch(self) -> list[_Outbound]:
        """The head of the queue, with the UPDATEs of the same canvas that directly follow it."""
        first = self._outbound[0]
        batch = [first]
        if first.update is None:
            return batch
        size = len(first.update)
        for queued in itertools.islice(self._outbound, 1, self._coalesce_max):
            if queued.canvas_id != first.canvas_id or queued.update is None:
                break
            size += len(queued.update)
            if size > _COALESCE_MAX_BYTES:
                break
            batch.append(queued)
        return batch

    async def _call(self, awaitable: Awaitable[T], *, proves_up: bool = True) -> T:
        """Await one broker call under the timeout, keeping ``broker_up`` current.

        After a failure, the first success makes every channel be checked against its stream.
        ``HistoryUnavailable`` is an answer, not a failure. ``proves_up=False`` for calls that a
        broker may answer locally (``position`` of a subscribed channel): they only count failures.
        """
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await awaitable
        except HistoryUnavailable:
            if proves_up:
                self._broker_reached()
            raise
        except Exception as exc:
            self._eager_check = True
            if self.broker_up:
                self.broker_up = False
                log.error(
                    "relay lost the broker, serving locally and keeping a backlog",
                    extra={"node_id": self.node_id, "error": repr(exc)},
                )
            raise
        if proves_up:
            self._broker_reached()
        return result

    def _broker_reached(self) -> None:
        if not self.broker_up:
            self.broker_up = True
            log.info(
                "relay reached the broker again",
                extra={"node_id": self.node_id, "backlog": len(self._outbound)},
            )
            self._check_eagerly()  # what did we miss meanwhile?

    # -- inbound -------------------------------------------------------------------------------

    def _on_publication(self, channel: _DocChannel, publication: Publication) -> None:
        """The broker's handler for ``channel`` (synchronous, in offset order)."""
        if channel.closed:
            return
        if channel.room is None or channel.position is None or channel.replaying:
            self._buffer(channel, publication)
            return
        self._accept(channel, publication)

    def _on_reset(self, channel: _DocChannel, name: str, position: StreamPosition) -> None:
        """The broker lost publications of ``channel`` it can never deliver; delivery resumes after
        ``position``. What was lost (and what was buffered) comes back by a full state exchange."""
        if channel.closed:
            return
        self.stats.resets += 1
        log.warning(
            "relay channel reset by the broker: full state exchange",
            extra={"canvas_id": channel.canvas_id, "node_id": self.node_id},
        )
        channel.pending.clear()
        channel.replaying = False
        channel.position = position
        channel.stalled_at = None
        channel.reload = channel.request = True
        self._mark(channel)

    def _buffer(self, channel: _DocChannel, publication: Publication) -> None:
        channel.pending.append(publication)
        if len(channel.pending) > self._pending_max:
            log.warning(
                "relay buffer over its bound: a full state exchange replaces it",
                extra={"canvas_id": channel.canvas_id, "pending": len(channel.pending)},
            )
            channel.pending.clear()
            channel.replaying = True
            channel.position = None  # read from the stream again by ``_replay``
            channel.reload = channel.request = True
            self._mark(channel)

    def _accept(self, channel: _DocChannel, publication: Publication) -> None:
        """Apply ``publication`` if it is the next one; detect duplicates, gaps and new epochs."""
        position = channel.position
        if position is None:
            self._buffer(channel, publication)
            return
        if publication.epoch != position.epoch:
            # the stream lost its history (e.g. Redis restarted empty): what we missed is unknown
            log.warning(
                "relay stream has a new epoch: full state exchange",
                extra={"canvas_id": channel.canvas_id, "node_id": self.node_id},
            )
            channel.position = position = StreamPosition(0, publication.epoch)
            channel.reload = channel.request = True
            self._mark(channel)
        if publication.offset <= position.offset:
            self.stats.duplicates += 1
            return
        if publication.offset > position.offset + 1:
            self.stats.gaps += 1
            channel.pending.appendleft(publication)  # first of what follows the gap
            channel.replaying = True
            self._mark(channel)
            return
        channel.position = StreamPosition(publication.offset, publication.epoch)
        self._handle(channel, publication.payload)

    def _drain(self, channel: _DocChannel) -> None:
        while channel.pending and channel.room is not None and not channel.replaying and not channel.closed:
            if channel.position is None:
                return
            self._accept(channel, channel.pending.popleft())

    def _handle(self, channel: _DocChannel, payload: bytes) -> None:
        room = channel.room
        if room is None:
            return
        try:
            envelope = decode_envelope(payload)
        except BadMessage as exc:
            log.warning(
                "relay dropped an undecodable envelope",
                extra={"canvas_id": channel.canvas_id, "error": str(exc)},
            )
            return
        if envelope.node_id == self.node_id:
            self.stats.own_dropped += 1
            return
        kind = envelope.kind
        try:
            if kind is EnvelopeKind.UPDATE:
                room.apply_remote(envelope.payload)
                self.stats.applied += 1
            elif kind is EnvelopeKind.SYNC_REQUEST:
                diff = _diff(room.doc, envelope.payload)
                self._send(channel.canvas_id, EnvelopeKind.SYNC_REPLY, diff, envelope.node_id)
                self.stats.sync_replies += 1
            elif kind is EnvelopeKind.SYNC_REPLY:
                if envelope.target == self.node_id:
                    room.apply_remote(envelope.payload)
                    self.stats.replies_applied += 1
            elif kind is EnvelopeKind.RESYNC:
                channel.reload = channel.request = True
                self._mark(channel)
            elif kind is EnvelopeKind.CLOSED:
                log.info(
                    "canvas deleted on another node, closing its room",
                    extra={"canvas_id": channel.canvas_id, "from_node": envelope.node_id},
                )
                self._rooms.close_room(channel.canvas_id, RoomClosed("canvas deleted on another node"))
        except BadMessage as exc:
            log.warning(
                "relay dropped an envelope the document refused",
                extra={"canvas_id": channel.canvas_id, "from_node": envelope.node_id, "error": str(exc)},
            )

    # -- repair --------------------------------------------------------------------------------

    def _mark(self, channel: _DocChannel) -> None:
        self._dirty.add(channel.canvas_id)
        self._repair_wakeup.set()

    async def _repair_loop(self) -> None:
        backoff = 0.05
        next_check = time.monotonic() + self._check_interval_s
        while True:
            try:
                async with asyncio.timeout(max(next_check - time.monotonic(), 0.0)):
                    await self._repair_wakeup.wait()
            except TimeoutError:
                pass
            self._repair_wakeup.clear()
            try:
                await self._unsubscribe_unused()
                await self._repair_dirty()
                if self._check_now or time.monotonic() >= next_check:
                    self._check_now = False
                    next_check = time.monotonic() + self._check_interval_s
                    eager, self._eager_check = self._eager_check, False
                    try:
                        await self._check_positions(eager=eager)
                    except Exception:
                        self._eager_check = True
                        raise
            except Exception as exc:
                log.warning(
                    "relay repair failed, retrying", extra={"node_id": self.node_id, "error": repr(exc)}
                )
                self._check_eagerly()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._retry_max_s)
                continue
            backoff = 0.05

    async def _repair_dirty(self) -> None:
        """Repair the marked channels, ``_REPAIR_CONCURRENCY`` at a time (after Redis restarted empty,
        every loaded canvas needs a storage reload). Failed ones stay marked; raises if any failed."""
        channels = [self._channels.get(canvas_id) for canvas_id in self._dirty]
        self._dirty.clear()
        slots = asyncio.Semaphore(_REPAIR_CONCURRENCY)
        failures: list[Exception] = []

        async def repair(channel: _DocChannel) -> None:
            async with slots:
                try:
                    await self._repair(channel)
                except Exception as exc:
                    failures.append(exc)
                    self._mark(channel)

        async with asyncio.TaskGroup() as group:
            for channel in channels:
                if channel is not None and not channel.closed:
                    group.create_task(repair(channel))
        if failures:
            raise failures[0]

    def _check_eagerly(self) -> None:
        """A broker call failed: compare every channel with its stream soon, any lag being a gap."""
        self._eager_check = self._check_now = True
        self._repair_wakeup.set()

    async def _unsubscribe_unused(self) -> None:
        for canvas_id in list(self._unsubscribe):
            if canvas_id in self._channels:  # loaded again meanwhile: keep the subscription
                self._unsubscribe.discard(canvas_id)
                continue
            await self._call(self._broker.unsubscribe(doc_channel(canvas_id)))
            self._unsubscribe.discard(canvas_id)
            channel = self._channels.get(canvas_id)
            if channel is not None:  # loaded again while we unsubscribed: subscribe again, replay
                channel.subscribed = False
                self._mark(channel)

    async def _subscribe(self, channel: _DocChannel) -> None:
        if channel.closed:
            return
        handler = functools.partial(self._on_publication, channel)
        on_reset = functools.partial(self._on_reset, channel)
        position = await self._call(self._broker.subscribe(channel.name, handler, on_reset=on_reset))
        channel.subscribed = True
        if channel.position is None:
            channel.position = position
        elif position.epoch != channel.position.epoch or position.offset > channel.position.offset:
            channel.replaying = True  # what was published while we were not subscribed
            self._mark(channel)
        self._drain(channel)

    async def _repair(self, channel: _DocChannel) -> None:
        if not channel.subscribed:
            await self._subscribe(channel)
        if channel.room is None:
            return  # buffering until the load ends; ``_on_loaded`` drains and exchanges
        if channel.replaying:
            await self._replay(channel)
        if channel.reload:
            await self._reload(channel)
        if channel.request and not channel.closed:
            channel.request = False
            self.stats.exchanges += 1
            self._send(channel.canvas_id, EnvelopeKind.SYNC_REQUEST, channel.room.doc.get_state())

    async def _replay(self, channel: _DocChannel) -> None:
        """Read the publications after ``channel.position`` from history, then the buffered ones."""
        since = channel.position
        if since is None:
            channel.position = await self._call(self._broker.position(channel.name), proves_up=False)
            channel.reload = channel.request = True  # we do not know what came before
            since = channel.position
        try:
            history = await self._call(self._broker.history(channel.name, since))
        except HistoryUnavailable as exc:
            log.warning(
                "relay history unavailable: full state exchange",
                extra={"canvas_id": channel.canvas_id, "node_id": self.node_id, "error": str(exc)},
            )
            channel.reload = channel.request = True
            current = await self._call(self._broker.position(channel.name), proves_up=False)
            if channel.position is not since or channel.closed:
                return
            first = channel.pending[0] if channel.pending else None
            if first is not None and first.epoch == current.epoch:
                channel.position = StreamPosition(first.offset - 1, first.epoch)
            else:
                channel.pending.clear()
                channel.position = current
            channel.replaying = False
            self._drain(channel)
            return
        if channel.position is not since or channel.closed:
            return  # superseded meanwhile (buffer overflow, unload)
        self.stats.replayed += len(history)
        channel.replaying = False
        for publication in history:
            if channel.replaying:
                break
            self._accept(channel, publication)
        self._drain(channel)

    async def _reload(self, channel: _DocChannel) -> None:
        """Apply what storage holds beyond the live document (what other nodes committed)."""
        channel.reload = False
        try:
            async with asyncio.timeout(self._store_timeout_s):
                updates = await self._store.load(channel.canvas_id)
        except Exception:
            channel.reload = True
            raise
        room = channel.room
        if room is None or channel.closed or not updates:
            return
        missing = _missing(room.doc, updates)
        if missing != protocol.EMPTY_UPDATE:
            room.apply_remote(missing)

    async def _check_positions(self, *, eager: bool) -> None:
        """Compare every live channel with its stream.

        A new epoch starts a full state exchange. Publications present in the stream but not applied
        start a replay (and a resubscription: the subscription may be dead) when they were already
        there at the previous check, or at once when ``eager`` (after a broker failure).
        """
        for channel in list(self._channels.values()):
            if channel.closed or channel.room is None or not channel.subscribed or channel.replaying:
                continue
            current = await self._call(self._broker.position(channel.name), proves_up=False)
            applied = channel.position
            if channel.closed or applied is None or channel.replaying:
                continue
            if current.epoch != applied.epoch:
                log.warning(
                    "relay stream has a new epoch: full state exchange",
                    extra={"canvas_id": channel.canvas_id, "node_id": self.node_id},
                )
                channel.position = StreamPosition(0, current.epoch)
                channel.replaying = current.offset > 0
                channel.reload = channel.request = True
                channel.subscribed = False
                channel.stalled_at = None
                self._mark(channel)
            elif current.offset > applied.offset:
                stalled = channel.stalled_at is not None and applied.offset < channel.stalled_at
                if eager or stalled:
                    self.stats.gaps += 1
                    channel.replaying = True
                    channel.subscribed = False
                    channel.stalled_at = None
                    self._mark(channel)
                else:
                    channel.stalled_at = current.offset
            else:
                channel.stalled_at = None


_STATE_KINDS = frozenset((EnvelopeKind.UPDATE, EnvelopeKind.SYNC_REPLY))


def _diff(doc: Doc, state_vector: bytes) -> bytes:
    """What ``doc`` has beyond ``state_vector``; raises BadMessage when it does not decode."""
    try:
        return doc.get_update(state_vector)
    except (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError):
        raise
    except BaseException as exc:  # pycrdt: ValueError, or a Rust panic (BaseException)
        raise BadMessage("state vector does not decode") from exc


def _missing(doc: Doc, updates: list[bytes]) -> bytes:
    """The part of ``updates`` (stored state and log) that ``doc`` does not have yet."""
    stored = Doc()
    for update in updates:
        stored.apply_update(update)
    return stored.get_update(doc.get_state())
