"""The JSON channel protocol, message type by message type and error code by error code, on a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from pycrdt import Map

from app.assistant import AiRequest, AssistantIdentity, Suggestion
from tests.conftest import mint
from tests.jsonclient import json_client

pytestmark = pytest.mark.e2e


async def test_connection_ack_and_envelope(server) -> None:
    async with json_client(server.ws_url, mint("alice"), path="/api/v1/ws/connect", init=False) as client:
        await client.send(
            "connection_init", {"clientInfo": {"version": "1.0.0", "platform": "web"}}, traceId="t-1"
        )
        ack = await client.expect("connection_ack")
        assert ack["sessionId"] == ack["data"]["sessionId"] and ack["sessionId"].startswith("sess_")
        assert ack["traceId"] == "t-1" and ack["timestamp"].endswith("Z")
        data = ack["data"]
        assert data["userId"] == "alice" and data["resumed"] is False and data["heartbeatIntervalMs"] > 0
        assert data["limits"]["maxMessageBytes"] == 65536 and data["limits"]["maxChannels"] == 100
        await client.send("connection_init", {}, id="again")
        error = await client.error("INVALID_MESSAGE")
        assert error["original_message_id"] == "again" == error["data"]["original_message_id"]
        assert error["code"] == "INVALID_MESSAGE" and error["message"] == error["data"]["message"]


async def test_refused_without_a_valid_token(server) -> None:
    for token in (None, "not-a-jwt", mint("old", ttl=-120)):
        url = f"{server.ws_url}/ws" + (f"?token={token}" if token else "")
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == 401


async def test_heartbeat(server) -> None:
    async with json_client(server.ws_url, mint()) as client:
        reply = await client.request("heartbeat", {"timestamp": "2026-05-20T15:30:00Z"}, "heartbeat_ack")
        assert reply["data"]["clientTimestamp"] == "2026-05-20T15:30:00Z" and reply["data"]["timestamp"]


async def test_subscribe_unsubscribe_and_channel_rules(server) -> None:
    perms = {"canvas:c1": "read", "ai_mesh:m1": "read"}
    async with json_client(server.ws_url, mint("alice", perms)) as client:
        for channel in (
            "canvas:c1",
            "canvas:c1:cursor",
            "canvas:c1:ai",
            "user:alice:notifications",
            "ai_mesh:m1",
        ):
            reply = await client.subscribe(channel)
            assert reply["data"]["channel"] == channel and reply["channel"] == channel
            assert reply["data"]["participantCount"] >= 1
        for bad in (
            "canvas",
            "canvas:",
            "canvas:c1:nope",
            "user:alice",
            "room:1",
            "canvas:a b",
            42,
            "ai_mesh:m1:x",
        ):
            reply = await client.request("subscribe", {"channel": bad}, "subscribed")
            assert reply["type"] == "error" and reply["data"]["code"] == "INVALID_MESSAGE", bad
        for forbidden in ("canvas:c2", "user:bob:notifications", "ai_mesh:m2"):
            reply = await client.request("subscribe", {"channel": forbidden}, "subscribed")
            assert reply["data"]["code"] == "FORBIDDEN" and reply["data"]["channel"] == forbidden
        reply = await client.request("unsubscribe", {"channel": "canvas:c1:ai"}, "unsubscribed")
        assert reply["data"] == {"channel": "canvas:c1:ai"}


async def test_notifications_reach_only_their_user(server) -> None:
    async with json_client(server.ws_url, mint("alice")) as alice:
        await alice.subscribe("user:alice:notifications")
        await server.node.gateway.publish(
            "user:alice:notifications",
            "notification",
            {"kind": "mention", "title": "Hi", "body": "You were mentioned"},
        )
        note = await alice.expect("notification")
        assert note["channel"] == "user:alice:notifications" and note["offset"] == 1
        assert note["data"]["title"] == "Hi"


async def test_canvas_update_every_action(server) -> None:
    async with (
        json_client(server.ws_url, mint("alice")) as alice,
        json_client(server.ws_url, mint("bob")) as bob,
    ):
        await alice.subscribe("canvas:c1")
        await bob.subscribe("canvas:c1")

        async def update(data: dict[str, Any]) -> dict[str, Any]:
            ack = await alice.request("canvas_update", {"canvasId": "c1", **data}, "ack")
            assert ack["type"] == "ack", ack
            seen = await bob.expect("canvas_updated", lambda m: m["offset"] == ack["data"]["offset"])
            assert seen["data"]["user"] == {"id": "alice", "name": "Alice"}
            assert seen["sessionId"] == alice.session_id and seen["channel"] == "canvas:c1"
            return seen["data"]

        added = await update(
            {"action": "add", "elementId": "e1", "properties": {"type": "rect", "x": 1, "y": 2, "width": 3}}
        )
        assert added["action"] == "add" and added["elementId"] == "e1"
        assert added["properties"]["type"] == "rect" and added["properties"]["createdBy"] == "alice"
        updated = await update(
            {"action": "update", "elementId": "e1", "properties": {"fill": "#fff", "width": None}}
        )
        assert updated["action"] == "update" and updated["properties"]["fill"] == "#fff"
        assert updated["properties"]["width"] is None
        moved = await update({"action": "move", "elementId": "e1", "position": {"x": 10, "y": 20}})
        assert moved["action"] == "move" and moved["position"] == {"x": 10, "y": 20}
        locked = await update({"action": "lock", "elementId": "e1"})
        assert locked["action"] == "lock" and locked["properties"]["lockedBy"]["id"] == "alice"
        unlocked = await update({"action": "unlock", "elementId": "e1"})
        assert unlocked["action"] == "unlock" and unlocked["properties"]["lockedBy"] is None
        layer = await update({"action": "layer_add", "layerId": "l1", "properties": {"name": "Top"}})
        assert (
            layer["action"] == "layer_add"
            and layer["layerId"] == "l1"
            and layer["properties"]["name"] == "Top"
        )
        layer = await update({"action": "layer_update", "layerId": "l1", "properties": {"visible": False}})
        assert layer["action"] == "layer_update" and layer["properties"] == {"visible": False}
        layer = await update({"action": "layer_delete", "layerId": "l1"})
        assert layer["action"] == "layer_delete" and "properties" not in layer
        deleted = await update({"action": "delete", "elementId": "e1"})
        assert deleted == {"canvasId": "c1", "action": "delete", "elementId": "e1", "user": deleted["user"]}
        assert not alice.unconsumed("canvas_updated")  # no echo to the sender
        assert "e1" not in server.node.rooms.get("c1").doc.get("elements", type=Map)


async def test_canvas_update_refusals(server) -> None:
    async with (
        json_client(server.ws_url, mint("alice")) as alice,
        json_client(server.ws_url, mint("bob")) as bob,
        json_client(server.ws_url, mint("rita", {"canvas:c1": "read"})) as reader,
    ):
        add = {"canvasId": "c1", "action": "add", "elementId": "e1", "properties": {"type": "rect"}}
        assert (await alice.request("canvas_update", add, "ack"))["type"] == "ack"
        assert (
            await alice.request(
                "canvas_update", {"canvasId": "c1", "action": "lock", "elementId": "e1"}, "ack"
            )
        )["type"] == "ack"
        for data in (
            {"action": "update", "elementId": "e1", "properties": {"x": 1}},
            {"action": "move", "elementId": "e1", "position": {"x": 1, "y": 1}},
            {"action": "delete", "elementId": "e1"},
            {"action": "unlock", "elementId": "e1"},
        ):
            reply = await bob.request("canvas_update", {"canvasId": "c1", **data}, "ack")
            assert reply["data"]["code"] == "FORBIDDEN", data
        reply = await reader.request(
            "canvas_update",
            {"canvasId": "c1", "action": "update", "elementId": "e1", "properties": {"x": 1}},
            "ack",
        )
        assert reply["data"]["code"] == "FORBIDDEN"
        for data in (
            {"action": "explode", "elementId": "e1"},
            {"action": "add", "elementId": "e1", "properties": {"type": "rect"}},  # exists
            {"action": "add", "elementId": "e2", "properties": {"type": "hexagon"}},
            {"action": "add", "elementId": "e2", "properties": {"type": "rect", "x": "left"}},
            {"action": "update", "elementId": "nope", "properties": {"x": 1}},
            {"action": "move", "elementId": "e1", "position": {"x": "1"}},
            {"action": "update", "elementId": "e1", "properties": {"lockedBy": None}},
        ):
            reply = await alice.request("canvas_update", {"canvasId": "c1", **data}, "ack")
            assert reply["data"]["code"] == "INVALID_MESSAGE", data
        reply = await alice.request("canvas_update", {"canvasId": "bad id", "action": "delete"}, "ack")
        assert reply["data"]["code"] == "INVALID_MESSAGE"


async def test_cursor_position_and_batch(server) -> None:
    async with (
        json_client(server.ws_url, mint("alice")) as alice,
        json_client(server.ws_url, mint("bob")) as bob,
    ):
        reply = await alice.request(
            "cursor_position", {"canvasId": "c1", "position": {"x": 1, "y": 2}}, "nothing"
        )
        assert reply["data"]["code"] == "INVALID_MESSAGE"  # not subscribed to the canvas yet
        await alice.subscribe("canvas:c1:cursor")
        await bob.subscribe("canvas:c1:cursor")
        await alice.send("cursor_position", {"canvasId": "c1", "position": {"x": 1.5, "y": 2}})
        moved = await bob.expect("cursor_moved")
        assert moved["channel"] == "canvas:c1:cursor"
        assert moved["data"] == {
            "canvasId": "c1",
            "position": {"x": 1.5, "y": 2},
            "user": {"id": "alice", "name": "Alice"},
            "state": "active",
        }
        batch = [{"x": i, "y": i * 2, "timestamp": 1000 + i} for i in range(3)]
        await alice.send("cursor_batch", {"canvasId": "c1", "positions": batch})
        moved = await bob.expect("cursor_moved")
        assert moved["data"]["position"] == {"x": 2, "y": 4} and moved["data"]["positions"] == batch
        for data in ({"canvasId": "c1", "positions": []}, {"canvasId": "c1", "positions": [{"x": 1}]}):
            reply = await alice.request("cursor_batch", data, "nothing")
            assert reply["data"]["code"] == "INVALID_MESSAGE"
        assert not alice.unconsumed("cursor_moved")


async def test_presence_join_leave_idle_active(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, presence_idle_after_s=0.4)
    async with json_client(server.ws_url, mint("alice")) as alice:
        await alice.subscribe("canvas:c1")
        async with json_client(server.ws_url, mint("bob")) as bob:
            reply = await bob.subscribe("canvas:c1:cursor")
            assert reply["data"]["participantCount"] == 2
            joined = await alice.expect("presence", lambda m: m["data"]["event"] == "join")
            assert (
                joined["data"]["user"] == {"id": "bob", "name": "Bob"} and joined["data"]["participants"] == 2
            )
            await alice.expect("presence", lambda m: m["data"]["event"] == "idle", timeout=5)
            await bob.send("cursor_position", {"canvasId": "c1", "position": {"x": 1, "y": 1}})
            active = await alice.expect("presence", lambda m: m["data"]["event"] == "active")
            assert active["data"]["user"]["id"] == "bob"
        left = await alice.expect("presence", lambda m: m["data"]["event"] == "leave")
        assert left["data"]["user"]["id"] == "bob" and left["data"]["participants"] == 1


class FakeAssistant:
    identity = AssistantIdentity("ai_fake", "Fake")

    @property
    def available(self) -> bool:
        return True

    async def answer(self, request: AiRequest) -> AsyncIterator[list[Suggestion]]:
        assert "e1" in request.canvas["elements"] and request.selected_elements == ("e1",)
        yield [Suggestion("color", "#ff5500", "Warmer", element_id="e1", severity="info")]
        yield [Suggestion("spacing", 8, "Even gaps")]


async def test_ai_request_unavailable_then_routed_to_an_assistant(server) -> None:
    async with (
        json_client(server.ws_url, mint("alice")) as alice,
        json_client(server.ws_url, mint("bob")) as bob,
    ):
        request = {
            "canvasId": "c1",
            "prompt": "Suggest improvements",
            "context": {"selectedElements": ["e1"]},
        }
        reply = await alice.request("ai_request", request, "ai_response")
        assert reply["data"]["code"] == "AI_UNAVAILABLE" and reply["data"]["original_message_id"]
        reader = await alice.request("ai_request", {"canvasId": "c1", "prompt": ""}, "ai_response")
        assert reader["data"]["code"] == "INVALID_MESSAGE"

        add = {"canvasId": "c1", "action": "add", "elementId": "e1", "properties": {"type": "rect"}}
        await alice.request("canvas_update", add, "ack")
        server.node.gateway.assistant = FakeAssistant()
        await alice.subscribe("canvas:c1:ai")
        await bob.subscribe("canvas:c1:ai")
        await alice.send("ai_request", request, id="ai-1")
        for client in (alice, bob):
            first = await client.expect("ai_response")
            second = await client.expect("ai_response")
            assert first["data"]["requestId"] == "ai-1" and first["data"]["done"] is False
            assert first["data"]["suggestions"] == [
                {
                    "type": "color",
                    "value": "#ff5500",
                    "message": "Warmer",
                    "elementId": "e1",
                    "severity": "info",
                }
            ]
            assert second["data"]["done"] is True and second["sessionId"] == "ai_fake"


async def test_token_refresh(server) -> None:
    async with json_client(
        server.ws_url, mint("alice", {"canvas:c1": "write", "canvas:c2": "read"})
    ) as client:
        await client.subscribe("canvas:c1")
        await client.subscribe("canvas:c2")
        reply = await client.request("token_refresh", {"token": "garbage"}, "token_refreshed")
        assert reply["data"]["code"] == "AUTH_FAILED"
        reply = await client.request("token_refresh", {"token": mint("mallory")}, "token_refreshed")
        assert reply["data"]["code"] == "FORBIDDEN"
        fresh = mint("alice", {"canvas:c1": "write"}, ttl=7200)
        reply = await client.request("token_refresh", {"token": fresh}, "token_refreshed")
        assert reply["type"] == "token_refreshed" and reply["data"]["expiresAt"].endswith("Z")
        dropped = await client.expect("unsubscribed")
        assert dropped["data"] == {"channel": "canvas:c2", "reason": "forbidden"}
        reply = await client.request("heartbeat", {}, "heartbeat_ack")
        assert reply["type"] == "heartbeat_ack"


async def test_internal_error_keeps_the_connection(server, monkeypatch) -> None:
    async with json_client(server.ws_url, mint()) as client:
        await client.subscribe("canvas:c1")

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("simulated fault")

        monkeypatch.setattr(server.node.gateway.bridge, "edit", broken)
        data = {"canvasId": "c1", "action": "add", "elementId": "e1", "properties": {"type": "rect"}}
        reply = await client.request("canvas_update", data, "ack")
        assert reply["data"]["code"] == "INTERNAL_ERROR"
        assert (await client.request("heartbeat", {}, "heartbeat_ack"))["type"] == "heartbeat_ack"


BAD_FRAMES = [
    ("not json", None),
    ("[1, 2]", None),
    ('"text"', None),
    ('{"id": "x1", "type": "bogus", "data": {}}', "x1"),
    ('{"id": "x2", "type": "subscribe"}', "x2"),
    ('{"id": "x3", "type": "subscribe", "data": []}', "x3"),
    ('{"id": "x4", "type": 7, "data": {}}', "x4"),
    ('{"id": "x5", "type": "subscribe", "data": {"channel": 5}}', "x5"),
    ('{"id": "x6", "type": "heartbeat", "data": {}, "traceId": 12}', "x6"),
    ('{"id": "x7", "type": "heartbeat", "data": {"n": 1e999}}', "x7"),
    ('{"id": "x8", "type": "heartbeat", "data": {"n": 123456789012345678901234567890}}', "x8"),
    ('{"id": "x9", "type": "heartbeat", "data": {"n": NaN}}', "x9"),
    ('{"id": "x10", "type": "heartbeat", "data": ' + "[" * 10_000 + "]" * 10_000 + "}", "x10"),
    ('{"id": "x11", "type": "heartbeat", "data": {"a": ' + '{"b": ' * 40 + "1" + "}" * 41 + "}", "x11"),
    (b"\x81\xa4type\xa9heartbeat", None),
    ('{"id": {"nested": 1}, "type": "heartbeat", "data": {}}', None),
]


@pytest.mark.parametrize(
    ("frame", "original_id"), BAD_FRAMES, ids=[f"bad{i}" for i in range(len(BAD_FRAMES))]
)
async def test_bad_input_is_invalid_message_and_the_next_message_is_served(
    server, frame, original_id
) -> None:
    async with json_client(server.ws_url, mint()) as client:
        await client.send_raw(frame)
        error = await client.error("INVALID_MESSAGE")
        assert error["data"]["original_message_id"] == original_id
        reply = await client.request("heartbeat", {}, "heartbeat_ack")
        assert reply["type"] == "heartbeat_ack"


async def test_messages_sent_before_the_ack_are_served_in_order(server) -> None:
    async with json_client(server.ws_url, mint(), init=False) as client:
        await client.send("connection_init", {})
        await client.send("subscribe", {"channel": "canvas:c1"})
        await client.send("subscribe", {"channel": "canvas:c1:cursor"})
        types = []
        for _ in range(3):
            message = await client.expect()
            types.append(message["type"])
        assert types == ["connection_ack", "subscribed", "subscribed"]


async def test_connections_close_cleanly_when_the_client_leaves(server) -> None:
    for _ in range(3):
        async with json_client(server.ws_url, mint("alice")) as client:
            await client.subscribe("canvas:c1")
    await asyncio.sleep(0.2)
    assert server.node.gateway.presence.count("c1") == 0
    assert not server.node.gateway.live


async def test_a_closed_canvas_drops_its_subscriptions(server) -> None:
    from crdt.errors import RoomClosed

    async with json_client(server.ws_url, mint()) as client:
        await client.subscribe("canvas:gone")
        await client.subscribe("canvas:gone:cursor")
        server.node.rooms.close_room("gone", RoomClosed("canvas deleted"))
        data = {"canvasId": "gone", "action": "add", "elementId": "e1", "properties": {"type": "rect"}}
        reply = await client.request("canvas_update", data, "ack")
        assert reply["data"]["code"] == "SUBSCRIPTION_FAILED"
        dropped = {(await client.expect("unsubscribed"))["data"]["channel"] for _ in range(2)}
        assert dropped == {"canvas:gone", "canvas:gone:cursor"}
        await client.subscribe("canvas:gone")
        assert (await client.request("canvas_update", data, "ack"))["type"] == "ack"
