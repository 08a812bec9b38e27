"""The cross-node document relay, with two or three "nodes" in one process.

Each node is a ``RoomManager`` with its own ``UpdateLog`` over ONE shared ``InMemoryDocumentStore``
and its own view of ONE shared ``InMemoryBroker`` (``Bus``), as nodes share Redis and PostgreSQL.
Views can drop deliveries and be cut off from the broker; the bus can restart empty (new epochs).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from crdt import protocol
from crdt.broker import Publication, PublicationHandler, ResetHandler, StreamPosition
from crdt.broker_memory import InMemoryBroker
from crdt.errors import BadMessage
from crdt.frame import OutFrame
from crdt.keys import doc_channel
from crdt.peer import Peer
from crdt.persist import UpdateLog
from crdt.relay import DocEnvelope, DocumentRelay, EnvelopeKind, decode_envelope, encode_envelope
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
    broker: NodeBroker
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
    "shutdown_timeout_s": 1.0,
}


@asynccontextmanager
async def cluster(
    names: tuple[str, ...] = ("n1", "n2"),
    *,
    bus: Bus | None = None,
    store: InMemoryDocumentStore | None = None,
    compact_after: int = 1000,
    **relay_args: Any,
) -> AsyncIterator[list[Node]]:
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
            view = bus.node(name)
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
    """Keys in the order ``peer`` received the updates that added them."""
    scratch, seen, order = Doc(), set(), []
    for frame in peer.sink.frames:  # type: ignore[attr-defined]
        payload = frame.payload
        if payload[:2] != bytes((protocol.MessageType.SYNC, protocol.SyncType.UPDATE)):
            continue
        message = protocol.parse_client_frame(payload, max_frame_bytes=1 << 24, max_sync_frame_bytes=1 << 24)
        scratch.apply_update(message.update)  # type: ignore[union-attr]
        for key in scratch.get("elements", type=Map).keys():
            if key not in seen:
                seen.add(key)
                order.append(key)
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


# -- envelope -------------------------------------------------------------------------------------


@given(
    kind=st.sampled_from(list(EnvelopeKind)),
    node_id=st.text(max_size=40),
    payload=st.binary(max_size=200),
    target=st.text(max_size=40),
)
def test_envelope_round_trips(kind: EnvelopeKind, node_id: str, payload: bytes, target: str) -> None:
    envelope = DocEnvelope(kind, node_id, payload, target)
    assert decode_envelope(encode_envelope(envelope)) == envelope


@given(data=st.binary(max_size=60))
def test_envelope_decoding_refuses_garbage_with_bad_message(data: bytes) -> None:
    try:
        decode_envelope(data)
    except BadMessage:
        pass


# -- convergence, order, echo, storage -----------------------------------------------------------


async def test_updates_converge_both_ways_in_order_without_echo_and_stored_once() -> None:
    async with cluster() as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        for peer in (n1.peer(), n2.peer()):
            peer.sink.frames.clear()  # type: ignore[attr-defined]
        sent1 = [f"a{i}" for i in range(40)]
        sent2 = [f"b{i}" for i in range(25)]
        for i in range(40):
            n1.edit(sent1[i])
            if i < 25:
                n2.edit(sent2[i])
            if i % 7 == 0:
                await asyncio.sleep(0)
        await eventually(lambda: len(n1.keys()) == 65 and converged(n1, n2))
        # each node's client saw the other node's updates, in the order they were made, once each
        assert received_keys(n2.peer()) == sent1
        assert received_keys(n1.peer()) == sent2
        assert len(n2.peer().sink.frames) == 40  # type: ignore[attr-defined]
        assert len(n1.peer().sink.frames) == 25  # type: ignore[attr-defined]
        # no echo: own envelopes come back from the broker and are dropped, nothing is applied twice
        assert n1.relay.stats.own_dropped >= 40 and n1.relay.stats.applied == 25
        assert n2.relay.stats.applied == 40
        await settle(n1, n2)
        # each update is stored once, by the node where it arrived
        assert stored_rows(n1.store.store) == {"n1": 40, "n2": 25}
        assert await stored_keys(n1.store.store) == n1.keys()


async def test_server_changes_are_relayed_and_deletes_converge() -> None:
    async with cluster() as (n1, n2), n1.joined(), n2.joined():
        n1.edit("gone")
        await eventually(lambda: "gone" in n2.keys())
        with n2.room().transact("bot", "Bot") as doc:
            doc.get("elements", type=Map)["srv"] = Map({"x": 5})
        n1.delete("gone")
        await eventually(lambda: "srv" in n1.keys() and "gone" not in n2.keys())
        assert converged(n1, n2)
        await settle(n1, n2)
        assert stored_rows(n1.store.store) == {"n1": 2, "n2": 1}


async def test_three_nodes_and_many_canvases() -> None:
    async with cluster(("n1", "n2", "n3")) as nodes, AsyncExitStack() as stack:
        for node in nodes:
            for canvas in ("x", "y"):
                await stack.enter_async_context(node.joined(canvas))
        for i in range(10):
            for node in nodes:
                node.edit(f"{node.node_id}-{i}", "x" if i % 2 else "y")
        for canvas in ("x", "y"):
            await eventually(lambda c=canvas: len(nodes[0].keys(c)) == 15 and converged(*nodes, canvas_id=c))
        await settle(*nodes)
        assert stored_rows(nodes[0].store.store, "x") == {"n1": 5, "n2": 5, "n3": 5}


# -- gaps -----------------------------------------------------------------------------------------


async def test_a_dropped_publication_is_detected_and_replayed_in_order() -> None:
    async with cluster() as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n2.peer().sink.frames.clear()  # type: ignore[attr-defined]
        n1.edit("k0")
        await eventually(lambda: "k0" in n2.keys())
        n2.broker.drop_next = 1
        for i in range(1, 6):
            n1.edit(f"k{i}")
        await eventually(lambda: len(n2.keys()) == 6)
        assert n2.broker.dropped == 1
        assert n2.relay.stats.gaps == 1 and n2.relay.stats.replayed >= 1
        assert received_keys(n2.peer()) == [f"k{i}" for i in range(6)]  # the gap did not reorder


async def test_a_lost_last_publication_is_found_by_the_position_check() -> None:
    async with cluster() as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n2.broker.drop_next = 1
        n1.edit("tail")  # nothing follows it
        await eventually(lambda: "tail" in n2.keys())
        assert n2.broker.dropped == 1 and n2.relay.stats.replayed >= 1


async def test_trimmed_history_falls_back_to_a_full_state_exchange() -> None:
    bus = Bus(history_max=3)
    async with cluster(bus=bus) as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n1.store.append_gate.clear()  # n1's updates are not in storage: only n1's memory has them
        n2.broker.drop_next = 10
        for i in range(10):
            n1.edit(f"k{i}")
        await eventually(lambda: n2.broker.dropped == 10)
        n1.edit("k10")  # reveals the gap; its history is gone
        await eventually(lambda: len(n2.keys()) == 11)
        assert n2.relay.stats.exchanges >= 1
        n1.store.append_gate.set()
        await settle(n1, n2)
        assert stored_rows(n1.store.store) == {"n1": 11}  # n2 stored none of what it was sent


async def test_broker_restarting_empty_changes_the_epoch_and_nodes_exchange_state() -> None:
    bus = Bus()
    async with cluster(bus=bus) as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n2.broker.drop_next = 3
        for i in range(3):
            n1.edit(f"lost{i}")  # published, never delivered to n2, then the broker forgets them
        await eventually(lambda: n2.broker.dropped == 3)
        await bus.reset()
        n1.edit("after")
        await eventually(lambda: len(n2.keys()) == 4 and converged(n1, n2))
        n2.edit("back")
        await eventually(lambda: "back" in n1.keys())


async def test_a_loss_reported_by_the_broker_leads_to_a_full_state_exchange() -> None:
    async with cluster(check_interval_s=60) as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n1.store.append_gate.clear()
        n2.broker.drop_next = 2
        n1.edit("lost1")
        n1.edit("lost2")
        await eventually(lambda: n2.broker.dropped == 2)
        await n2.broker.report_reset(doc_channel(CANVAS))  # delivery resumes after the lost ones
        await eventually(lambda: {"lost1", "lost2"} <= n2.keys().keys())
        assert n2.relay.stats.resets == 1 and n2.relay.stats.gaps == 0 and n2.relay.stats.exchanges == 1
        n1.edit("next")
        await eventually(lambda: "next" in n2.keys())
        n1.store.append_gate.set()


async def test_restart_without_further_traffic_is_found_by_the_position_check() -> None:
    bus = Bus()
    async with cluster(bus=bus) as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n1.store.append_gate.clear()
        n2.broker.drop_next = 1
        n1.edit("lost")
        await eventually(lambda: n2.broker.dropped == 1)
        await bus.reset()  # nobody publishes afterwards
        await eventually(lambda: "lost" in n2.keys())
        n1.store.append_gate.set()


# -- loading --------------------------------------------------------------------------------------


async def test_loading_gets_what_another_node_holds_but_has_not_stored() -> None:
    async with cluster() as (n1, n2), n1.joined():
        n1.store.append_gate.clear()
        for i in range(5):
            n1.edit(f"k{i}")
        await settle_publications(n1)
        async with n2.joined():
            await eventually(lambda: len(n2.keys()) == 5)
            assert n2.relay.stats.load_requests == 1 and n1.relay.stats.sync_replies == 1
        n1.store.append_gate.set()
        await settle(n1, n2)
        assert stored_rows(n1.store.store) == {"n1": 5}


async def settle_publications(*nodes: Node) -> None:
    await eventually(lambda: all(node.relay.backlog == 0 for node in nodes))


async def test_updates_published_during_a_load_are_applied_after_it() -> None:
    async with cluster() as (n1, n2), n1.joined():
        n1.store.append_gate.clear()
        n2.store.load_gate.clear()
        joining = asyncio.create_task(_join_and_wait(n2, 3))
        await eventually(lambda: n2.store.loads == 1)  # subscribed, now reading the store
        for i in range(3):
            n1.edit(f"k{i}")
        await settle_publications(n1)
        n2.store.load_gate.set()
        async with asyncio.timeout(5):
            await joining
        assert n2.relay.stats.loaded_pending == 3
        n1.store.append_gate.set()


async def _join_and_wait(node: Node, count: int) -> None:
    async with node.joined():
        await eventually(lambda: len(node.keys()) == count)


async def test_unloading_unsubscribes_and_reloading_resubscribes() -> None:
    async with cluster() as (n1, n2), n1.joined():
        async with n2.joined():
            n2.edit("x")
            await eventually(lambda: "x" in n1.keys())
        channel = doc_channel(CANVAS)
        await eventually(lambda: channel not in n2.broker.handlers)
        n1.edit("y")
        async with n2.joined():
            await eventually(lambda: {"x", "y"} <= n2.keys().keys())
            assert channel in n2.broker.handlers
            n1.edit("z")
            await eventually(lambda: "z" in n2.keys())


# -- outages --------------------------------------------------------------------------------------


async def test_a_node_cut_off_from_the_broker_serves_locally_and_catches_up() -> None:
    async with cluster() as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n1.broker.down = True
        for i in range(20):
            n1.edit(f"a{i}")
            n2.edit(f"b{i}")
        await asyncio.sleep(0.3)
        assert len(n1.keys()) == 20 + len([k for k in n1.keys() if k.startswith("b")])
        assert not n1.relay.broker_up and n1.relay.backlog > 0
        n1.broker.down = False
        await eventually(lambda: len(n1.keys()) == 40 and converged(n1, n2))
        assert n1.relay.broker_up
        await settle(n1, n2)
        assert stored_rows(n1.store.store) == {"n1": 20, "n2": 20}
        assert await stored_keys(n1.store.store) == n1.keys()


async def test_backlog_over_its_bound_becomes_one_resync() -> None:
    async with cluster(backlog_max_bytes=600) as (n1, n2), n1.joined(), n2.joined():
        await joined_up(n1, n2)
        n1.broker.down = True
        for i in range(30):
            n1.edit(f"a{i}")
        assert n1.relay.stats.overflows == 1
        assert n1.relay.backlog < 30
        n2.edit("b")
        n1.broker.down = False
        await eventually(lambda: len(n2.keys()) == 31 and converged(n1, n2))
        assert n2.relay.stats.exchanges >= 1
        await settle(n1, n2)
        assert stored_rows(n1.store.store) == {"n1": 30, "n2": 1}


async def test_subscribe_failing_at_load_is_repaired_later() -> None:
    async with cluster() as (n1, n2), n1.joined():
        n1.edit("before")
        await settle(n1)
        n2.broker.down = True
        async with n2.joined():
            assert "before" in n2.keys()  # loaded from storage while the broker is unreachable
            n1.edit("during")
            n2.edit("local")
            await asyncio.sleep(0.1)
            n2.broker.down = False
            await eventually(lambda: {"before", "during", "local"} <= n2.keys().keys() and converged(n1, n2))


async def test_compaction_racing_on_two_nodes_loses_nothing() -> None:
    store = InMemoryDocumentStore()
    async with cluster(store=store, compact_after=10) as (n1, n2), n1.joined(), n2.joined():
        for i in range(60):
            n1.edit(f"a{i}")
            n2.edit(f"b{i}")
            if i % 5 == 0:
                await asyncio.sleep(0.002)
        await eventually(lambda: len(n1.keys()) == 120 and converged(n1, n2))
        await settle(n1, n2)
        await asyncio.gather(n1.log.compact(CANVAS), n2.log.compact(CANVAS))
        assert await stored_keys(store) == n1.keys()


# -- property: random interleavings and faults ----------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("edit"), st.integers(0, 1), st.integers(0, 15)),
        st.tuples(st.just("delete"), st.integers(0, 1), st.integers(0, 15)),
        st.tuples(st.just("drop"), st.integers(0, 1), st.integers(1, 4)),
        st.tuples(st.just("down"), st.integers(0, 1), st.booleans()),
        st.tuples(st.just("reset"), st.just(0), st.just(0)),
        st.tuples(st.just("yield"), st.just(0), st.integers(0, 3)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, history_max=st.sampled_from([2, 50]), sync_delivery=st.booleans())
async def test_random_edits_and_faults_converge(
    ops: list[tuple[str, int, Any]], history_max: int, sync_delivery: bool
) -> None:
    bus = Bus(history_max=history_max, async_delivery=not sync_delivery)
    store = InMemoryDocumentStore()
    async with cluster(bus=bus, store=store, backlog_max_bytes=2000) as nodes:
        n1, n2 = nodes
        accepted = Counter[str]()  # updates each node accepted from its clients (PEER changes)
        for node in nodes:
            node.rooms.observers.append(
                lambda room, change, name=node.node_id: accepted.update([name] if change.log_seq else [])
            )
        async with n1.joined(), n2.joined():
            for step, (op, who, arg) in enumerate(ops):
                node = nodes[who]
                if op == "edit":
                    node.edit(f"k{arg}", value=step)
                elif op == "delete":
                    node.delete(f"k{arg}")
                elif op == "drop":
                    node.broker.drop_next += arg
                elif op == "down":
                    node.broker.down = arg
                elif op == "reset":
                    await bus.reset()
                else:
                    for _ in range(arg):
                        await asyncio.sleep(0)
            for node in nodes:
                node.broker.down = False
                node.broker.drop_next = 0
            await eventually(lambda: converged(n1, n2), timeout=10)
            await settle(n1, n2)
            assert converged(n1, n2)
            assert await stored_keys(store) == n1.keys()
            assert stored_rows(store) == accepted  # each accepted update stored once, by its node


@pytest.mark.parametrize("kind", [EnvelopeKind.UPDATE, EnvelopeKind.SYNC_REPLY])
async def test_undecodable_envelopes_from_a_broken_node_are_dropped(kind: EnvelopeKind) -> None:
    async with cluster() as (n1, n2), n1.joined(), n2.joined():
        bad = encode_envelope(DocEnvelope(kind, "n9", b"\xff\xff\xff", "n2"))
        await n1.broker.publish(doc_channel(CANVAS), bad)
        await n1.broker.publish(doc_channel(CANVAS), b"\x07garbage")
        n1.edit("after")
        await eventually(lambda: "after" in n2.keys())
