"""Room behaviour without sockets: fan-out, echo rules, persistence, and fuzzed frames that must not hurt."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from crdt import protocol
from crdt.errors import BadMessage, CrdtError, FrameTooLarge, SlowConsumer
from crdt.frame import OutFrame
from crdt.peer import Peer
from crdt.persist import UpdateLog
from crdt.room import Origin, RoomManager
from storage.memory import InMemoryDocumentStore


class ListSink:
    """Collects frames; reports a full backlog after ``cap`` frames."""

    def __init__(self, cap: int = 10_000) -> None:
        self.frames: list[OutFrame] = []
        self.cap = cap
        self.aborted = False
        self.evicted: CrdtError | None = None

    def write(self, frame: OutFrame) -> bool:
        self.frames.append(frame)
        return len(self.frames) <= self.cap

    def abort(self) -> None:
        self.aborted = True

    def evict(self, error: CrdtError) -> None:
        self.evicted = error


def make_peer(name: str, *, can_write: bool = True, cap: int = 10_000) -> Peer:
    return Peer(f"p_{name}", name, name.title(), can_write=can_write, sink=ListSink(cap))


def update_adding(key: str, doc: Doc | None = None) -> bytes:
    doc = doc or Doc()
    before = doc.get_state()
    doc.get("elements", type=Map)[key] = Map({"x": 1})
    return doc.get_update(before)


@pytest.fixture
async def rooms():
    store = InMemoryDocumentStore()
    async with (
        UpdateLog(store, commit_window_s=0.001) as log,
        RoomManager(store, log, node_id="n1", unload_grace_s=0.01) as manager,
    ):
        manager.store = store  # for assertions
        yield manager


async def test_update_fans_out_once_to_others_and_is_logged(rooms) -> None:
    a, b, c = make_peer("a"), make_peer("b"), make_peer("c")
    changes = []
    rooms.observers.append(lambda room, change: changes.append(change))
    async with rooms.join("r", a) as room, rooms.join("r", b), rooms.join("r", c):
        for peer in (a, b, c):
            peer.sink.frames.clear()
        room.receive(a, protocol.encode_update(update_adding("e1")))
        assert a.sink.frames == []  # no echo to the sender
        assert len(b.sink.frames) == 1
        assert b.sink.frames[0] is c.sink.frames[0]  # one frame object shared by every receiver
        assert [change.origin for change in changes] == [Origin.PEER]
        assert changes[0].user_id == "a"
        assert [(item.item_id, item.action) for item in changes[0].items] == [("e1", "add")]
        await rooms._log.wait_durable(changes[0].log_seq)
    assert len(await rooms.store.load("r")) == 1


async def test_read_only_peer_is_told_once_and_not_applied(rooms) -> None:
    reader = make_peer("reader", can_write=False)
    async with rooms.join("ro", reader) as room:
        reader.sink.frames.clear()
        for key in ("x", "y"):
            room.receive(reader, protocol.encode_update(update_adding(key)))
        assert "x" not in room.doc.get("elements", type=Map)
        denied = [f.payload for f in reader.sink.frames if f.payload[0] == protocol.MessageType.AUTH]
        assert len(denied) == 1


async def test_slow_consumer_fails_without_affecting_others(rooms) -> None:
    slow, fast, writer = make_peer("slow", cap=3), make_peer("fast"), make_peer("w")
    async with rooms.join("s", slow) as room, rooms.join("s", fast), rooms.join("s", writer):
        doc = Doc()
        for i in range(10):
            room.receive(writer, protocol.encode_update(update_adding(f"e{i}", doc)))
        assert isinstance(slow.error, SlowConsumer)
        assert slow.sink.evicted is slow.error
        assert fast.error is None
        assert len(room.doc.get("elements", type=Map)) == 10


async def test_remote_updates_are_fanned_out_but_not_logged(rooms) -> None:
    peer = make_peer("p")
    async with rooms.join("remote", peer) as room:
        peer.sink.frames.clear()
        room.apply_remote(update_adding("from-b"))
        assert len(peer.sink.frames) == 1
        await rooms._log.wait_durable()
    assert await rooms.store.load("remote") == []


async def test_room_unloads_after_grace_and_reloads_complete(rooms) -> None:
    peer = make_peer("p")
    async with rooms.join("u", peer) as room:
        room.receive(peer, protocol.encode_update(update_adding("kept")))
    await asyncio.sleep(0.2)
    assert rooms.get("u") is None
    async with rooms.lease("u") as again:
        assert "kept" in again.doc.get("elements", type=Map)


def _mutate(frame: bytes, data: st.DataObject) -> bytes:
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        buf[data.draw(st.integers(0, len(buf) - 1), label="at")] = data.draw(
            st.integers(0, 255), label="byte"
        )
    return bytes(buf[: data.draw(st.integers(1, len(buf)), label="cut")])


VALID = Doc(client_id=99)
VALID_FRAMES = [
    protocol.encode_update(update_adding("fuzz", VALID)),
    protocol.encode_sync_step1(Doc(client_id=5).get_state()),
    protocol.encode_awareness([protocol.AwarenessEntry(5, 1, '{"cursor":{"x":1}}')]),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_fuzzed_frames_never_crash_or_corrupt(rooms, data: st.DataObject) -> None:
    """Random and mutated frames: either refused as the sender's error, or applied as a valid update."""
    frame = data.draw(
        st.one_of(st.binary(max_size=200), st.sampled_from(VALID_FRAMES).map(lambda f: _mutate(f, data)))
    )
    sender, witness = make_peer("fuzzer"), make_peer("witness")
    async with rooms.join("fuzz", sender) as room, rooms.join("fuzz", witness):
        before = room.doc.get_update()
        try:
            room.receive(sender, frame)
        except CrdtError as error:
            assert isinstance(error, BadMessage | FrameTooLarge)
            assert room.doc.get_update() == before  # refused frames leave the live document untouched
        # the live document is still usable and encodes to something a fresh doc can load
        Doc().apply_update(room.doc.get_update())
        room.receive(witness, protocol.encode_update(update_adding("after")))
        assert "after" in room.doc.get("elements", type=Map)
