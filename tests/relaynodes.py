"""Nodes for relay tests: ``RoomManager`` + ``UpdateLog`` + ``DocumentRelay`` per node in one process.

Each node has its own update log over ONE shared ``InMemoryDocumentStore`` (through a ``GatedStore``
whose appends and loads can be held back) and its own broker: a view of one shared in-memory ``Bus``
(which can drop deliveries, cut a node off, restart empty), or any ``Broker`` (``RedisBroker``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, Map

from crdt import protocol
from crdt.broker import Publication, PublicationHandler, ResetHandler, StreamPosition
from crdt.broker_memory import InMemoryBroker
from crdt.frame import OutFrame
from crdt.peer import Peer
from crdt.persist import UpdateLog
from crdt.relay import DocumentRelay
from crdt.room import Room, RoomManager
from storage.memory import InMemoryDocumentStore

CANVAS = "c1"

# -- a broker shared by several nodes -------------------------------------------------------------


class Bus:
    """One ``InMemoryBroker`` that several nodes share, each with its own handler per channel."""

    def __init__(self, *, async_delivery: bool = True, **broker_args: Any) -> None:
        self._broker_args = broker_args
        self.broker = InMemoryBroker(**broker_args)
        self.views: list[NodeBroker] = []
        self.async_delivery = async_delivery
        self._channels: set[str] = set()

    def node(self, node_id: str) -> NodeBroker:
        view = NodeBroker(self, node_id)
        self.views.append(view)
        return view

    async def ensure(self, channel: str) -> None:
        if channel not in self._channels:
            self._channels.add(channel)
            await self.broker.subscribe(channel, lambda publication: self._dispatch(channel, publication))

    async def reset(self) -> None:
        """Redis restarted empty: history and offsets are gone (new epochs); subscriptions survive."""
        self.broker = InMemoryBroker(**self._broker_args)
        channels, self._channels = self._channels, set()
        for channel in channels:
            await self.ensure(channel)

    def _dispatch(self, channel: str, publication: Publication) -> None:
        for view in self.views:
            view.deliver(channel, publication)


@dataclass(eq=False)
class NodeBroker:
    """One node's ``Broker``: its handlers, and faults (dropped deliveries, an unreachable broker)."""

    bus: Bus
    node_id: str
    handlers: dict[str, PublicationHandler] = field(default_factory=dict)
    resets: dict[str, ResetHandler] = field(default_factory=dict)
    down: bool = False
    drop_next: int = 0
    dropped: int = 0
    delivered: int = 0

    def _check(self) -> None:
        if self.down:
            raise ConnectionError(f"broker unreachable from {self.node_id}")

    async def publish(self, channel: str, payload: bytes, *, publisher: str | None = None) -> Publication:
        self._check()
        await self.bus.ensure(channel)
        return await self.bus.broker.publish(channel, payload, publisher=publisher)

    async def subscribe(
        self, channel: str, handler: PublicationHandler, *, on_reset: ResetHandler | None = None
    ) -> StreamPosition:
        self._check()
        await self.bus.ensure(channel)
        self.handlers[channel] = handler
        if on_reset is not None:
            self.resets[channel] = on_reset
        return await self.bus.broker.position(channel)

    async def report_reset(self, channel: str) -> None:
        """What ``RedisBroker`` does when it finds a loss: tell the subscriber where delivery resumes."""
        self.resets[channel](channel, await self.bus.broker.position(channel))

    async def unsubscribe(self, channel: str) -> None:
        self._check()
        self.handlers.pop(channel, None)

    async def position(self, channel: str) -> StreamPosition:
        self._check()
        return await self.bus.broker.position(channel)

    async def history(
        self, channel: str, since: StreamPosition, *, limit: int | None = None
    ) -> list[Publication]:
        self._check()
        return await self.bus.broker.history(channel, since, limit=limit)

    def deliver(self, channel: str, publication: Publication) -> None:
        if channel not in self.handlers:
            return
        if self.down or self.drop_next > 0:
            self.drop_next = max(self.drop_next - 1, 0)
            self.dropped += 1
            return
        if self.bus.async_delivery:
            asyncio.get_running_loop().call_soon(self._call, channel, publication)
        else:
            self._call(channel, publication)

    def _call(self, channel: str, publication: Publication) -> None:
        handler = self.handlers.get(channel)
        if handler is not None and not self.down:
            self.delivered += 1
            handler(publication)


# -- nodes ------------------------------------------------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.frames: list[OutFrame] = []

    def write(self, frame: OutFrame) -> bool:
        self.frames.append(frame)
        return True

    def abort(self) -> None:
        pass


class GatedStore:
    """A node's handle on the shared store whose appends and loads can be held back."""

    def __init__(self, store: InMemoryDocumentStore) -> None:
        self.store = store
        self.append_gate = asyncio.Event()
        self.append_gate.set()
        self.load_gate = asyncio.Event()
        self.load_gate.set()
        self.loads = 0

    async def load(self, canvas_id: str) -> list[bytes]:
        self.loads += 1
        await self.load_gate.wait()
        return await self.store.load(canvas_id)

    async def append(self, entries: Any) -> None:
        await self.append_gate.wait()
        await self.store.append(entries)

    async def compact(self, canvas_id: str, merge: Any) -> int:
        return await self.store.compact(canvas_id, merge)

    async def tail_length(self, canvas_id: str) -> int:
        return await self.store.tail_length(canvas_id)


@dataclass(eq=False)
class Node:
    node_id: str
    broker: Any  # a NodeBroker, or any Broker
    store: GatedStore
    log: UpdateLog
    rooms: RoomManager
    relay: DocumentRelay
    editors: dict[str, Doc] = field(default_factory=dict)  # this node's "client" per canvas
    peers: dict[str, Peer] = field(default_factory=dict)

    def room(self, canvas_id: str = CANVAS) -> Room:
        room = self.rooms.get(canvas_id)
        assert room is not None, f"{canvas_id} is not loaded on {self.node_id}"
        return room

    def peer(self, canvas_id: str = CANVAS) -> Peer:
        return self.peers[canvas_id]

    def editor(self, canvas_id: str = CANVAS) -> Doc:
        return self.editors.setdefault(canvas_id, Doc())

    def edit(self, key: str, canvas_id: str = CANVAS, value: int = 1) -> bytes:
        """A local client sets ``elements[key]``; returns the update it sent."""
        editor = self.editor(canvas_id)
        before = editor.get_state()
        editor.get("elements", type=Map)[key] = Map({"x": value, "by": self.node_id})
        update = editor.get_update(before)
        self.room(canvas_id).receive(self.peer(canvas_id), protocol.encode_update(update))
        return update

    def delete(self, key: str, canvas_id: str = CANVAS) -> None:
        editor = self.editor(canvas_id)
        elements = editor.get("elements", type=Map)
        if key not in elements:
            return
        before = editor.get_state()
        del elements[key]
        update = editor.get_update(before)
        self.room(canvas_id).receive(self.peer(canvas_id), protocol.encode_update(update))

    def keys(self, canvas_id: str = CANVAS) -> dict[str, Any]:
        return self.room(canvas_id).doc.get("elements", type=Map).to_py() or {}

    @asynccontextmanager
    async def joined(self, canvas_id: str = CANVAS) -> AsyncIterator[Peer]:
        peer = Peer(f"p_{self.node_id}", f"u_{self.node_id}", self.node_id, can_write=True, sink=ListSink())
        async with self.rooms.join(canvas_id, peer):
            self.peers[canvas_id] = peer
            try:
                yield peer
            finally:
                del self.peers[canvas_id]


RELAY_ARGS = {
    "broker_timeout_s": 0.2,
    "store_timeout_s": 1.0,
    "check_interval_s": 0.05,
    "retry_max_s": 0.05,
    "coalesce_max": 1,  # one publication per update, so that tests can drop a given one
    "shutdown_timeout_s": 1.0,
}


@asynccontextmanager
async def cluster(
    names: tuple[str, ...] = ("n1", "n2"),
    *,
    bus: Bus | None = None,
    brokers: Callable[[str], Any] | None = None,
    store: InMemoryDocumentStore | None = None,
    compact_after: int = 1000,
    **relay_args: Any,
) -> AsyncIterator[list[Node]]:
    """Nodes ``names`` on one store; each node's broker is ``brokers(name)`` or a view of ``bus``."""
    bus = bus or Bus()
    store = store or InMemoryDocumentStore()
    nodes = []
    async with AsyncExitStack() as stack:
        for name in names:
            gated = GatedStore(store)
            log = await stack.enter_async_context(
                UpdateLog(gated, commit_window_s=0.001, compact_after=compact_after)  # type: ignore[arg-type]
            )
            rooms = await stack.enter_async_context(
                RoomManager(gated, log, node_id=name, unload_grace_s=0.05)  # type: ignore[arg-type]
            )
            view = brokers(name) if brokers is not None else bus.node(name)
            relay = await stack.enter_async_context(
                DocumentRelay(rooms, view, gated, **{**RELAY_ARGS, **relay_args})  # type: ignore[arg-type]
            )
            nodes.append(Node(name, view, gated, log, rooms, relay))
        yield nodes


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not true within {timeout} s: {predicate()!r}") from None


def converged(*nodes: Node, canvas_id: str = CANVAS) -> bool:
    first = nodes[0].keys(canvas_id)
    return all(node.keys(canvas_id) == first for node in nodes[1:])


def stored_rows(store: InMemoryDocumentStore, canvas_id: str = CANVAS) -> Counter[str]:
    return Counter(row.node_id for row in store._updates.get(canvas_id, []))


async def stored_keys(store: InMemoryDocumentStore, canvas_id: str = CANVAS) -> dict[str, Any]:
    doc = Doc()
    for update in await store.load(canvas_id):
        doc.apply_update(update)
    return doc.get("elements", type=Map).to_py() or {}


def received_keys(peer: Peer) -> list[str]:
    """Keys in the order ``peer`` received the updates that added them (keys that arrived in one
    frame, a coalesced update, in the order of their numeric suffix)."""
    scratch, seen, order = Doc(), set(), []
    for frame in peer.sink.frames:  # type: ignore[attr-defined]
        payload = frame.payload
        if payload[:2] != bytes((protocol.MessageType.SYNC, protocol.SyncType.UPDATE)):
            continue
        message = protocol.parse_client_frame(payload, max_frame_bytes=1 << 24, max_sync_frame_bytes=1 << 24)
        scratch.apply_update(message.update)  # type: ignore[union-attr]
        new = [key for key in scratch.get("elements", type=Map).keys() if key not in seen]
        seen.update(new)
        order += sorted(new, key=lambda key: int("0" + "".join(c for c in key if c.isdigit())))
    return order


async def joined_up(first: Node, second: Node) -> None:
    """Wait until ``second``'s load-time sync request was answered by ``first`` and all is quiet."""
    await eventually(lambda: second.relay.stats.replies_applied >= 1)
    await eventually(lambda: first.relay.backlog == 0 and second.relay.backlog == 0)
    await asyncio.sleep(0.01)


async def settle(*nodes: Node) -> None:
    """Wait until every node has published its backlog and committed its log."""
    await eventually(lambda: all(node.relay.backlog == 0 for node in nodes))
    for node in nodes:
        async with asyncio.timeout(5):
            await node.log.wait_durable()


async def settle_publications(*nodes: Node) -> None:
    """Wait until every node has published its backlog."""
    await eventually(lambda: all(node.relay.backlog == 0 for node in nodes))
