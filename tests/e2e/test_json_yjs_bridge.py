"""A pycrdt editor and a JSON client on one canvas: each sees the other's changes, cursors and presence."""

from __future__ import annotations

import json

import pytest
from pycrdt import Map

from crdt import protocol
from crdt.protocol import AwarenessEntry, AwarenessUpdate
from tests.conftest import mint
from tests.jsonclient import json_client
from tests.yclient import elements, eventually, yjs_client

pytestmark = pytest.mark.e2e


def _awareness_states(frames: list[bytes]) -> list[dict]:
    states = []
    for frame in frames:
        if frame[:1] != b"\x01":
            continue
        message = protocol.parse_client_frame(frame, max_frame_bytes=1 << 20, max_sync_frame_bytes=1 << 20)
        if isinstance(message, AwarenessUpdate):
            states += [json.loads(e.state_json) for e in message.entries if not e.removed]
    return states


async def test_pycrdt_editor_and_json_client_see_each_other(server) -> None:
    async with (
        yjs_client(server.ws_url, "b1", mint("yuri")) as (doc, channel, connection),
        json_client(server.ws_url, mint("jane")) as jane,
    ):
        reply = await jane.subscribe("canvas:b1")
        assert reply["data"]["participantCount"] == 2  # the Yjs editor counts
        await jane.subscribe("canvas:b1:cursor")

        # JSON -> Yjs: a canvas_update is a transaction on the document
        add = {
            "canvasId": "b1",
            "action": "add",
            "elementId": "j1",
            "properties": {"type": "text", "text": "hi"},
        }
        assert (await jane.request("canvas_update", add, "ack"))["type"] == "ack"
        await eventually(lambda: "j1" in elements(doc) and elements(doc)["j1"]["text"] == "hi")
        move = {"canvasId": "b1", "action": "move", "elementId": "j1", "position": {"x": 30, "y": 40}}
        await jane.request("canvas_update", move, "ack")
        await eventually(lambda: elements(doc)["j1"]["x"] == 30 and elements(doc)["j1"]["y"] == 40)

        # Yjs -> JSON: every change is announced element by element, with action and user
        def changed(element_id: str):
            return lambda m: m["data"].get("elementId") == element_id

        elements(doc)["y1"] = Map({"type": "rect", "x": 5, "y": 6})
        added = (await jane.expect("canvas_updated", changed("y1")))["data"]
        assert added["action"] == "add" and added["user"] == {"id": "yuri", "name": "Yuri"}
        assert added["properties"] == {"type": "rect", "x": 5, "y": 6}
        elements(doc)["y1"]["x"] = 50
        moved = (await jane.expect("canvas_updated", changed("y1")))["data"]
        assert moved["action"] == "move" and moved["position"] == {"x": 50, "y": 6}
        elements(doc)["y1"]["fill"] = "#000"
        updated = (await jane.expect("canvas_updated", changed("y1")))["data"]
        assert updated["action"] == "update" and updated["properties"] == {"fill": "#000"}
        elements(doc)["j1"]["text"] = "edited in Yjs"
        updated = (await jane.expect("canvas_updated", changed("j1")))["data"]
        assert updated["properties"] == {"text": "edited in Yjs"} and updated["user"]["id"] == "yuri"
        del elements(doc)["y1"]
        deleted = (await jane.expect("canvas_updated", changed("y1")))["data"]
        assert deleted["action"] == "delete"

        # JSON cursor -> the canvas's Yjs awareness
        await jane.send("cursor_position", {"canvasId": "b1", "position": {"x": 7, "y": 8}})
        await eventually(
            lambda: any(
                s.get("cursor") == {"x": 7, "y": 8} and s["user"]["id"] == "jane"
                for s in _awareness_states(channel.received)
            )
        )
        # Yjs awareness cursor -> cursor_moved (identity from the editor's token, not its state)
        state = {"user": {"name": "Whoever"}, "cursor": {"x": 3, "y": 4}}
        await connection.send(protocol.encode_awareness([AwarenessEntry(4242, 1, json.dumps(state))]))
        cursor = await jane.expect("cursor_moved", lambda m: m["data"]["user"]["id"] == "yuri")
        assert cursor["data"]["position"] == {"x": 3, "y": 4} and cursor["data"]["user"]["name"] == "Yuri"
        assert cursor["channel"] == "canvas:b1:cursor"
    # the editor left: presence says so
    async with json_client(server.ws_url, mint("watcher")) as watcher:
        reply = await watcher.subscribe("canvas:b1")
        assert reply["data"]["participantCount"] == 1


async def test_yjs_editor_presence_join_and_leave(server) -> None:
    async with json_client(server.ws_url, mint("jane")) as jane:
        await jane.subscribe("canvas:b2")
        async with yjs_client(server.ws_url, "b2", mint("yuri")):
            joined = await jane.expect("presence", lambda m: m["data"]["event"] == "join")
            assert joined["data"]["user"]["id"] == "yuri" and joined["data"]["participants"] == 2
        left = await jane.expect("presence", lambda m: m["data"]["event"] == "leave")
        assert left["data"]["user"]["id"] == "yuri" and left["data"]["participants"] == 1


async def test_locks_hold_for_json_clients_and_are_visible_to_yjs(server) -> None:
    async with (
        yjs_client(server.ws_url, "b3", mint("yuri")) as (doc, _, _),
        json_client(server.ws_url, mint("jane")) as jane,
        json_client(server.ws_url, mint("kim")) as kim,
    ):
        elements(doc)["e1"] = Map({"type": "rect", "x": 1})
        await eventually(lambda: "e1" in server.node.rooms.get("b3").doc.get("elements", type=Map))
        lock = {"canvasId": "b3", "action": "lock", "elementId": "e1"}
        assert (await jane.request("canvas_update", lock, "ack"))["type"] == "ack"
        await eventually(lambda: (elements(doc)["e1"].get("lockedBy") or {}).get("id") == "jane")
        update = {"canvasId": "b3", "action": "update", "elementId": "e1", "properties": {"x": 2}}
        assert (await kim.request("canvas_update", update, "ack"))["data"]["code"] == "FORBIDDEN"
        assert (await jane.request("canvas_update", update, "ack"))["type"] == "ack"


async def test_json_edit_makes_an_idle_user_active_again(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, presence_idle_after_s=0.3)
    async with (
        json_client(server.ws_url, mint("jane")) as jane,
        json_client(server.ws_url, mint("bob")) as bob,
    ):
        await jane.subscribe("canvas:idle")
        await bob.subscribe("canvas:idle")
        idle = await jane.expect(
            "presence", lambda m: m["data"]["event"] == "idle" and m["data"]["user"]["id"] == "bob"
        )
        assert idle["data"]["canvasId"] == "idle"
        edit = {"canvasId": "idle", "action": "add", "elementId": "e1", "properties": {"type": "rect"}}
        assert (await bob.request("canvas_update", edit, "ack"))["type"] == "ack"
        active = await jane.expect(
            "presence", lambda m: m["data"]["event"] == "active" and m["data"]["user"]["id"] == "bob"
        )
        assert active["data"]["canvasId"] == "idle"


async def test_a_removed_property_is_told_apart_from_one_set_to_null(server) -> None:
    async with json_client(server.ws_url, mint("jane")) as jane:
        await jane.subscribe("canvas:rm")
        async with yjs_client(server.ws_url, "rm", mint("yann")) as (doc, _, _):
            elements(doc)["e1"] = Map({"type": "rect", "fill": "#fff", "stroke": "#000"})
            await jane.expect("canvas_updated", lambda m: m["data"]["action"] == "add")
            with doc.transaction():
                del elements(doc)["e1"]["fill"]
                elements(doc)["e1"]["stroke"] = None
            update = await jane.expect("canvas_updated", lambda m: m["data"]["action"] == "update")
            assert update["data"]["removedProperties"] == ["fill"]
            assert update["data"]["properties"] == {"fill": None, "stroke": None}
