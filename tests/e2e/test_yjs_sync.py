"""Real uvicorn, real pycrdt providers: sync, convergence, persistence across restarts, read-only peers."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from pycrdt import Doc, Map

from crdt import protocol
from tests.conftest import mint
from tests.yclient import elements, eventually, yjs_client

pytestmark = pytest.mark.e2e


async def test_two_clients_converge(server) -> None:
    token = mint("alice")
    async with (
        yjs_client(server.ws_url, "c1", token) as (doc_a, _, _),
        yjs_client(server.ws_url, "c1", mint("bob")) as (
            doc_b,
            _,
            _,
        ),
    ):
        elements(doc_a)["e1"] = Map({"type": "rect", "x": 1})
        elements(doc_b)["e2"] = Map({"type": "text", "text": "hi"})
        await eventually(lambda: set(elements(doc_a).keys()) == set(elements(doc_b).keys()) == {"e1", "e2"})
        elements(doc_b)["e1"]["x"] = 42
        await eventually(lambda: elements(doc_a)["e1"]["x"] == 42)


async def test_late_joiner_gets_everything_and_restart_keeps_it(server_factory, sqlite_url) -> None:
    first = await server_factory(database_url=sqlite_url)
    async with yjs_client(first.ws_url, "persist", mint()) as (doc, _, _):
        for i in range(50):
            elements(doc)[f"e{i}"] = Map({"x": i})
        async with yjs_client(first.ws_url, "persist", mint("late")) as (late, _, _):
            await eventually(lambda: len(elements(late)) == 50)
    await first.stop()
    second = await server_factory(database_url=sqlite_url)
    async with yjs_client(second.ws_url, "persist", mint("after")) as (doc, _, _):
        await eventually(lambda: len(elements(doc)) == 50)
        assert elements(doc)["e49"]["x"] == 49


async def test_read_only_peer_gets_document_but_cannot_write(server) -> None:
    async with yjs_client(server.ws_url, "ro", mint("writer")) as (writer, _, _):
        elements(writer)["e1"] = Map({"x": 1})
        async with yjs_client(server.ws_url, "ro", mint("reader", {"canvas:ro": "read"})) as (
            reader,
            channel,
            _,
        ):
            await eventually(lambda: "e1" in elements(reader))
            elements(reader)["evil"] = Map({"x": 666})
            denied = protocol.encode_permission_denied("read-only access to this canvas")
            await eventually(lambda: denied in channel.received)
            elements(writer)["e2"] = Map({"x": 2})
            await eventually(lambda: "e2" in elements(reader))
            await asyncio.sleep(0.2)
            assert "evil" not in elements(writer)
            assert "evil" not in server.node.rooms.get("ro").doc.get("elements", type=Map)


async def test_awareness_is_relayed_and_removed_on_leave(server) -> None:
    entry = protocol.AwarenessEntry(1234, 1, '{"user":{"name":"Ann"},"cursor":{"x":1,"y":2}}')
    async with yjs_client(server.ws_url, "aw", mint("watcher")) as (_, watcher, _):
        async with websockets.connect(f"{server.ws_url}/yjs/aw?token={mint('ann')}") as raw:
            await raw.recv()  # sync step 1
            await raw.send(protocol.encode_awareness([entry]))
            await eventually(lambda: protocol.encode_awareness([entry]) in watcher.received)
            echoed = await asyncio.wait_for(raw.recv(), 5)
            assert echoed == protocol.encode_awareness([entry])  # y-websocket clients rely on the echo
        removal = protocol.encode_awareness([protocol.AwarenessEntry(1234, 2, "null")])
        await eventually(lambda: removal in watcher.received)
        # a newcomer does not see the departed client's state
        assert server.node.rooms.get("aw").awareness.entries() == []


async def test_malformed_frames_close_only_the_sender(server) -> None:
    async with yjs_client(server.ws_url, "bad", mint("good")) as (good, _, _):
        elements(good)["e1"] = Map({"x": 1})
        room = server.node.rooms.get("bad")
        await eventually(lambda: "e1" in room.doc.get("elements", type=Map))
        before = room.doc.get_update()
        for frame in (b"\x00\x02\x05ab", protocol.encode_update(b"\x01\xff\xff\xff"), b"\x01\x05{bad"):
            async with websockets.connect(f"{server.ws_url}/yjs/bad?token={mint('evil')}") as raw:
                await raw.send(frame)
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    async with asyncio.timeout(5):
                        while True:
                            await raw.recv()
                assert closed.value.rcvd.code == 1007
        assert room.doc.get_update() == before
        elements(good)["e2"] = Map({"x": 2})
        async with yjs_client(server.ws_url, "bad", mint("check")) as (check, _, _):
            await eventually(lambda: set(elements(check).keys()) == {"e1", "e2"})


async def test_oversize_frame_is_refused_with_1009_but_large_offline_state_syncs(server) -> None:
    async with websockets.connect(f"{server.ws_url}/yjs/big?token={mint()}", max_size=None) as raw:
        await raw.recv()
        await raw.send(protocol.encode_update(b"\x00" * (65 * 1024)))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                while True:
                    await raw.recv()
        assert closed.value.rcvd.code == 1009
    offline = Doc()
    elements(offline)["big"] = Map({"text": "z" * (300 * 1024)})
    async with yjs_client(server.ws_url, "big", mint(), doc=offline):
        async with yjs_client(server.ws_url, "big", mint("other")) as (other, _, _):
            await eventually(lambda: "big" in elements(other))
            assert len(elements(other)["big"]["text"]) == 300 * 1024
