"""Rooms: the live Yjs document of one canvas on this node, its peers and awareness; and the manager.

``Room.receive`` handles one client frame synchronously (no awaits), so frames of one room are
applied in arrival order and a peer's reply is queued before anything that follows it.
``RoomManager`` owns room lifetimes: concurrent joins share one load, a room unloads after a grace
period without peers, flushed first, and a join during unloading revives the still-complete room.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType

from opentelemetry import trace
from pycrdt import Doc, TransactionEvent

from . import protocol
from .awareness import AwarenessTable
from .canvas import ELEMENTS, ChangeCollector, ItemChange
from .errors import BadMessage, RoomClosed, RoomFull, RoomUnavailable, ServerShutdown
from .frame import OutFrame
from .peer import Peer
from .persist import UpdateLog
from .protocol import AwarenessEntry, AwarenessUpdate, DocUpdate, QueryAwareness, SyncStep1
from .store import DocumentStore, LogEntry

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


class Origin(Enum):
    """Where a change to the live document came from; decides where it goes next.

    PEER and SERVER changes go to local peers, to observers and to the update log; BROKER changes
    (already stored by the node that accepted them) go to local peers and observers; LOAD nowhere.
    """

    PEER = "peer"
    SERVER = "server"
    BROKER = "broker"
    LOAD = "load"


@dataclass(frozen=True, slots=True)
class Change:
    """One committed transaction on a room's document, as observers see it."""

    canvas_id: str
    update: bytes
    origin: Origin
    user_id: str | None
    user_name: str | None
    items: tuple[ItemChange, ...]  # per element/layer: what the transaction did to it
    log_seq: int | None  # sequence number in the update log, for ``UpdateLog.wait_durable``
    tag: object = None  # what the caller of ``Room.transact`` passed, opaque to the room
    peer_id: str | None = None  # the peer whose update this was (origin PEER)


ChangeObserver = Callable[["Room", Change], None]
AwarenessObserver = Callable[["Room", "list[AwarenessEntry]", str], None]
"""Called with the entries that changed the room's awareness and their owner (a peer id, or the
owner passed to ``set_server_awareness``)."""
PeerObserver = Callable[["Room", Peer, bool], None]
"""Called when a peer is seated (``True``) or leaves (``False``)."""
RoomObserver = Callable[["Room"], None]
"""Called with a room that finished loading, or that left the manager."""
LoadHook = Callable[[str], Awaitable[None]]
"""Awaited with a canvas id before its room reads the store (the relay subscribes first, so that
nothing published during the load is missed). Runs within the load timeout; raising fails the load."""


@dataclass(frozen=True, slots=True)
class _Source:
    origin: Origin
    peer: Peer | None = None
    user_id: str | None = None
    user_name: str | None = None
    tag: object = None


@dataclass(slots=True)
class RoomObservers:
    """Callbacks the room manager's rooms report to; each runs synchronously and must not block."""

    changes: list[ChangeObserver] = field(default_factory=list)
    awareness: list[AwarenessObserver] = field(default_factory=list)
    peers: list[PeerObserver] = field(default_factory=list)
    loaded: list[RoomObserver] = field(default_factory=list)  # stored state applied, no peer seated yet
    # left the manager (unloaded, deleted, failed to load, node shutdown): it gets no more changes
    unloaded: list[RoomObserver] = field(default_factory=list)
    # a canvas is being deleted on this node (``RoomManager.deleting``), loaded here or not
    deleting: list[Callable[[str], None]] = field(default_factory=list)


class Room:
    """The live document of one canvas on this node.

    Not created directly: ``RoomManager.join``/``RoomManager.lease`` create, load and share rooms.
    All methods are synchronous and must be called from the event loop thread.
    """

    def __init__(
        self,
        canvas_id: str,
        *,
        node_id: str,
        update_log: UpdateLog,
        max_frame_bytes: int,
        max_sync_frame_bytes: int,
        max_peers: int,
        observers: list[ChangeObserver],
        extra_observers: RoomObservers | None = None,
    ) -> None:
        self.canvas_id = canvas_id
        self.doc = Doc()
        self.awareness = AwarenessTable()
        self.peers: dict[str, Peer] = {}
        self.leases = 0
        self.loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.unload_task: asyncio.Task[None] | None = None
        self.closed = False
        self._node_id = node_id
        self._log = update_log
        self._max_frame_bytes = max_frame_bytes
        self._max_sync_frame_bytes = max_sync_frame_bytes
        self._max_peers = max_peers
        self._observers = observers
        self._extra = extra_observers or RoomObservers()
        self._source: _Source | None = None
        self._collector = ChangeCollector()  # observes the document from the end of ``load`` on
        self._subscription = self.doc.observe(self._on_transaction)

    # -- loading -----------------------------------------------------------------------------

    def load(self, updates: list[bytes]) -> None:
        """Apply stored updates (state + log tail); nothing is broadcast or logged. Called once, first.

        Per-element change tracking starts only afterwards: converting every loaded element for
        observers that ignore loads made loading a large canvas several times slower.
        """
        with self._changing(_Source(Origin.LOAD)):
            for update in updates:
                self.doc.apply_update(update)
        self._collector.observe(self.doc)

    # -- peers -------------------------------------------------------------------------------

    def add_peer(self, peer: Peer) -> None:
        """Seat ``peer`` and start its sync: our state vector, then everyone's awareness.

        Raises:
            RoomFull: the room already has ``max_peers`` peers.
        """
        if len(self.peers) >= self._max_peers:
            raise RoomFull(f"canvas {self.canvas_id} already has {self._max_peers} peers")
        self.peers[peer.peer_id] = peer
        peer.send(OutFrame(protocol.encode_sync_step1(self.doc.get_state())))
        entries = self.awareness.entries()
        if entries:
            peer.send(OutFrame(protocol.encode_awareness(entries)))
        self._notify(self._extra.peers, peer, True)

    def remove_peer(self, peer: Peer) -> None:
        """Unseat ``peer`` and tell the others its awareness states are gone."""
        if self.peers.pop(peer.peer_id, None) is None:
            return
        removals = self.awareness.remove_owner(peer.peer_id)
        if removals:
            self._broadcast(OutFrame(protocol.encode_awareness(removals)), exclude=None)
            self._notify(self._extra.awareness, removals, peer.peer_id)
        self._notify(self._extra.peers, peer, False)

    # -- inbound -----------------------------------------------------------------------------

    def receive(self, peer: Peer, frame: bytes) -> None:
        """Handle one binary frame from ``peer``.

        Raises:
            BadMessage, FrameTooLarge: the frame is malformed or too large; the live document and
                the other peers are unaffected, the caller closes this peer.
        """
        message = protocol.parse_client_frame(
            frame, max_frame_bytes=self._max_frame_bytes, max_sync_frame_bytes=self._max_sync_frame_bytes
        )
        if isinstance(message, SyncStep1):
            self._answer_step1(peer, message.state_vector)
        elif isinstance(message, DocUpdate):
            self._receive_update(peer, message.update)
        elif isinstance(message, AwarenessUpdate):
            self._receive_awareness(peer, message.entries, frame)
        elif isinstance(message, QueryAwareness):
            peer.send(OutFrame(protocol.encode_awareness(self.awareness.entries())))

    def _answer_step1(self, peer: Peer, state_vector: bytes) -> None:
        try:
            update = self.doc.get_update(state_vector)
        except (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError):
            raise
        except BaseException as exc:  # pycrdt: ValueError, or a Rust panic (BaseException)
            raise BadMessage("state vector does not decode") from exc
        peer.send(OutFrame(protocol.encode_sync_step2(update)))

    def _receive_update(self, peer: Peer, update: bytes) -> None:
        if update == protocol.EMPTY_UPDATE:
            return
        if not peer.can_write:
            if not peer.told_read_only:
                peer.told_read_only = True
                peer.send(OutFrame(protocol.encode_permission_denied("read-only access to this canvas")))
            return
        self.apply_update(update, _Source(Origin.PEER, peer, peer.user_id, peer.user_name))

    def _receive_awareness(self, peer: Peer, entries: tuple[AwarenessEntry, ...], frame: bytes) -> None:
        changed = self.awareness.apply(entries, peer.peer_id)
        if changed:
            # echoed to the sender too, as y-websocket's server does: a client alone in a room
            # otherwise hears nothing for 30 s and drops the connection as dead
            self._broadcast(OutFrame(frame), exclude=None)
            self._notify(self._extra.awareness, changed, peer.peer_id)

    # -- changes -----------------------------------------------------------------------------

    def apply_update(self, update: bytes, source: _Source) -> None:
        """Apply a checked Yjs update to the live document as coming from ``source``."""
        with self._changing(source):
            try:
                self.doc.apply_update(update)
            except (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError):
                raise
            except BaseException as exc:
                raise BadMessage("update was refused by the document") from exc

    def apply_remote(self, update: bytes) -> None:
        """Apply an update another node accepted (and stored): fan out locally, do not log it."""
        self.apply_update(protocol.check_update(update), _Source(Origin.BROKER))

    @contextmanager
    def transact(self, user_id: str | None, user_name: str | None, *, tag: object = None) -> Iterator[Doc]:
        """Make a server-side change (JSON bridge, restore) as one transaction on the live document.

        Yields the document; the change is broadcast, logged and observed like a peer's update.
        ``tag`` is handed to observers in ``Change.tag`` (e.g. which JSON session made the change).
        """
        with self._changing(_Source(Origin.SERVER, None, user_id, user_name, tag)), self.doc.transaction():
            yield self.doc

    def set_server_awareness(self, entries: list[AwarenessEntry], owner: str) -> None:
        """Publish awareness states on behalf of a non-Yjs participant (JSON client, assistant)."""
        changed = self.awareness.apply(tuple(entries), owner)
        if changed:
            self._broadcast(OutFrame(protocol.encode_awareness(changed)), exclude=None)
            self._notify(self._extra.awareness, changed, owner)

    def remove_server_awareness(self, owner: str) -> None:
        removals = self.awareness.remove_owner(owner)
        if removals:
            self._broadcast(OutFrame(protocol.encode_awareness(removals)), exclude=None)
            self._notify(self._extra.awareness, removals, owner)

    def _notify(self, observers: list[Callable[..., None]], *args: object) -> None:
        for observer in observers:
            try:
                observer(self, *args)
            except Exception:
                log.exception("room observer failed", extra={"canvas_id": self.canvas_id})

    @contextmanager
    def _changing(self, source: _Source) -> Iterator[None]:
        previous, self._source = self._source, source
        try:
            yield
        finally:
            self._source = previous

    def _on_transaction(self, event: TransactionEvent) -> None:
        items = tuple(self._collector.drain())
        source = self._source
        if source is None or source.origin is Origin.LOAD:
            return
        update = event.update
        if update == protocol.EMPTY_UPDATE:
            return  # e.g. an update whose dependencies are still missing: nothing integrated yet
        self._broadcast(OutFrame(protocol.encode_update(update)), exclude=source.peer)
        log_seq = None
        if source.origin in (Origin.PEER, Origin.SERVER):
            elements = tuple(item.item_id for item in items if item.root == ELEMENTS)
            log_seq = self._log.append(
                LogEntry(self.canvas_id, update, source.user_id, self._node_id, elements)
            )
        change = Change(
            self.canvas_id,
            update,
            source.origin,
            source.user_id,
            source.user_name,
            items,
            log_seq,
            source.tag,
            source.peer.peer_id if source.peer is not None else None,
        )
        for observer in self._observers:
            try:
                observer(self, change)
            except Exception:
                log.exception("change observer failed", extra={"canvas_id": self.canvas_id})

    def _broadcast(self, frame: OutFrame, *, exclude: Peer | None) -> None:
        for peer in list(self.peers.values()):
            if peer is not exclude:
                peer.send(frame)

    def close(self, error: RoomClosed | ServerShutdown) -> None:
        """Fail every peer with ``error`` and stop observing the document."""
        self.closed = True
        for peer in list(self.peers.values()):
            peer.fail(error)
        self.doc.unobserve(self._subscription)
        self._collector.unobserve()


class RoomManager:
    """The node-local hub of rooms.

    Use as an async context manager; leaving it fails every peer with ``ServerShutdown`` and
    flushes the rooms. ``join`` and ``lease`` are the only ways to get a room.

    Args:
        store: durable storage for loading rooms.
        update_log: where rooms append accepted updates.
        node_id: this node's name, stored with each update.
        unload_grace_s: how long a room without peers stays loaded.
        load_timeout_s: longest wait for the store when loading a room.
    """

    def __init__(
        self,
        store: DocumentStore,
        update_log: UpdateLog,
        *,
        node_id: str,
        unload_grace_s: float = 5.0,
        load_timeout_s: float = 10.0,
        max_frame_bytes: int = 64 * 1024,
        max_sync_frame_bytes: int = 16 * 1024 * 1024,
        max_peers_per_room: int = 1000,
    ) -> None:
        self._store = store
        self._log = update_log
        self.node_id = node_id
        self._unload_grace_s = unload_grace_s
        self._load_timeout_s = load_timeout_s
        self._room_args = {
            "max_frame_bytes": max_frame_bytes,
            "max_sync_frame_bytes": max_sync_frame_bytes,
            "max_peers": max_peers_per_room,
        }
        self._rooms: dict[str, Room] = {}
        self._deleting: set[str] = set()
        self.room_observers = RoomObservers()
        self.observers: list[ChangeObserver] = self.room_observers.changes
        self.before_load: list[LoadHook] = []  # awaited in order, within the load timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def __aenter__(self) -> RoomManager:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        for room in list(self._rooms.values()):
            room.close(ServerShutdown("node shutting down"))
            room._notify(self.room_observers.unloaded)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def get(self, canvas_id: str) -> Room | None:
        """The room of ``canvas_id`` if it is loaded (and finished loading) on this node."""
        room = self._rooms.get(canvas_id)
        if room is None or not room.loaded.done() or room.loaded.exception() is not None:
            return None
        return room

    def rooms(self) -> list[Room]:
        return [room for room in self._rooms.values() if room.loaded.done()]

    @asynccontextmanager
    async def lease(self, canvas_id: str) -> AsyncIterator[Room]:
        """Hold ``canvas_id``'s room loaded (loading it if needed) for the duration of the block.

        Raises:
            RoomUnavailable: the store could not load it in time.
            ServerShutdown: the node is shutting down.
        """
        if self._closing:
            raise ServerShutdown("node shutting down")
        if canvas_id in self._deleting:
            raise RoomClosed(f"canvas {canvas_id} is being deleted")
        room = self._rooms.get(canvas_id)
        if room is None:
            room = self._create(canvas_id)
        room.leases += 1
        try:
            await asyncio.shield(room.loaded)
            if room.closed:  # deleted while we waited for the load
                raise RoomClosed(f"canvas {canvas_id} was deleted")
            yield room
        finally:
            room.leases -= 1
            if room.leases == 0 and not room.closed:
                self._schedule_unload(room)

    @asynccontextmanager
    async def join(self, canvas_id: str, peer: Peer) -> AsyncIterator[Room]:
        """Seat ``peer`` in ``canvas_id``'s room (loading it first) until the block exits.

        The peer receives the complete document: it is seated only after the load finished.
        """
        async with self.lease(canvas_id) as room:
            room.add_peer(peer)
            try:
                yield room
            finally:
                room.remove_peer(peer)

    @asynccontextmanager
    async def deleting(self, canvas_id: str, error: RoomClosed) -> AsyncIterator[None]:
        """Close ``canvas_id``'s room and refuse every lease and join on it until the block exits.

        The caller deletes the canvas from storage inside the block: a client arriving meanwhile
        would otherwise load the not-yet-deleted canvas into a fresh room that outlives the delete.
        """
        self._deleting.add(canvas_id)
        for observer in self.room_observers.deleting:
            try:
                observer(canvas_id)
            except Exception:
                log.exception("deleting observer failed", extra={"canvas_id": canvas_id})
        try:
            self.close_room(canvas_id, error)
            yield
        finally:
            self._deleting.discard(canvas_id)

    def close_room(self, canvas_id: str, error: RoomClosed) -> None:
        """Disconnect everyone from ``canvas_id`` (the canvas was deleted) and forget the room."""
        room = self._rooms.pop(canvas_id, None)
        if room is not None:
            room.close(error)
            self._log.forget(canvas_id)
            room._notify(self.room_observers.unloaded)

    def _create(self, canvas_id: str) -> Room:
        room = Room(
            canvas_id,
            node_id=self.node_id,
            update_log=self._log,
            observers=self.observers,
            extra_observers=self.room_observers,
            **self._room_args,
        )
        self._rooms[canvas_id] = room
        self._spawn(self._load(room))
        return room

    async def _load(self, room: Room) -> None:
        with tracer.start_as_current_span("room.load", attributes={"canvas_id": room.canvas_id}):
            try:
                async with asyncio.timeout(self._load_timeout_s):
                    for hook in self.before_load:
                        await hook(room.canvas_id)
                    updates = await self._store.load(room.canvas_id)
                room.load(updates)
            except Exception as exc:
                log.error("room load failed", extra={"canvas_id": room.canvas_id, "error": repr(exc)})
                if self._rooms.get(room.canvas_id) is room:
                    del self._rooms[room.canvas_id]
                room.loaded.set_exception(RoomUnavailable(f"could not load canvas {room.canvas_id}"))
                room.loaded.exception()  # mark retrieved: waiters may all have left
                room._notify(self.room_observers.unloaded)
                return
        self._log.note_loaded(room.canvas_id, max(len(updates) - 1, 0))
        log.info("room loaded", extra={"canvas_id": room.canvas_id, "updates": len(updates)})
        room._notify(self.room_observers.loaded)
        room.loaded.set_result(None)

    def _schedule_unload(self, room: Room) -> None:
        if room.unload_task is None or room.unload_task.done():
            room.unload_task = self._spawn(self._unload_when_idle(room))

    async def _unload_when_idle(self, room: Room) -> None:
        await asyncio.sleep(self._unload_grace_s)
        while room.leases == 0 and not room.closed:
            try:
                await self._log.wait_durable()
                if room.leases == 0:
                    await self._log.compact(room.canvas_id)
            except Exception:
                log.exception("room flush failed, keeping it loaded", extra={"canvas_id": room.canvas_id})
                await asyncio.sleep(self._unload_grace_s)
                continue
            if room.leases == 0 and self._rooms.get(room.canvas_id) is room:
                del self._rooms[room.canvas_id]
                room.close(ServerShutdown("room unloaded"))
                self._log.forget(room.canvas_id)
                room._notify(self.room_observers.unloaded)
                log.info("room unloaded", extra={"canvas_id": room.canvas_id})
            return

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
