"""Subprotocol maily.msgpack.v1: the same envelopes as MessagePack, and compact binary cursor frames."""

from __future__ import annotations

import struct

import msgpack
import pytest
import websockets

from tests.conftest import mint
from tests.jsonclient import MSGPACK, json_client

pytestmark = pytest.mark.e2e


async def test_msgpack_round_trip_and_interop_with_json(server) -> None:
    async with (
        json_client(server.ws_url, mint("mia"), binary=True) as mia,
        json_client(server.ws_url, mint("jay")) as jay,
    ):
        assert mia.connection.subprotocol == MSGPACK
        assert mia.received[0]["type"] == "connection_ack" and mia.received[0]["data"]["userId"] == "mia"
        await mia.subscribe("canvas:m1")
        await jay.subscribe("canvas:m1")
        add = {"canvasId": "m1", "action": "add", "elementId": "e1", "properties": {"type": "rect", "x": 1.5}}
        ack = await mia.request("canvas_update", add, "ack")
        assert ack["type"] == "ack" and ack["data"]["messageId"] == "m2"
        from_mia = await jay.expect("canvas_updated")
        assert from_mia["data"]["properties"]["x"] == 1.5
        update = {"canvasId": "m1", "action": "update", "elementId": "e1", "properties": {"fill": "#abc"}}
        await jay.request("canvas_update", update, "ack")
        from_jay = await mia.expect("canvas_updated")
        assert from_jay["channel"] == "canvas:m1" and from_jay["data"]["properties"]["fill"] == "#abc"
        assert (await mia.request("heartbeat", {"timestamp": 1}, "heartbeat_ack"))["data"][
            "clientTimestamp"
        ] == 1


async def test_compact_cursor_frames(server) -> None:
    init = {"compactCursors": True}
    async with (
        json_client(server.ws_url, mint("mia"), binary=True, init_data=init) as mia,
        json_client(server.ws_url, mint("jay")) as jay,
    ):
        assert mia.received[0]["data"]["compactCursors"] is True
        await mia.subscribe("canvas:m2:cursor")
        await jay.subscribe("canvas:m2:cursor")
        canvas = b"m2"
        await mia.send_raw(bytes([0x01, len(canvas)]) + canvas + struct.pack(">ff", 1.5, 2.5))
        moved = await jay.expect("cursor_moved")
        assert moved["data"]["position"] == {"x": 1.5, "y": 2.5} and moved["data"]["user"]["id"] == "mia"
        batch = struct.pack(">H", 2) + struct.pack(">ffd", 1, 1, 1000.0) + struct.pack(">ffd", 3, 4, 1016.0)
        await mia.send_raw(bytes([0x02, len(canvas)]) + canvas + batch)
        moved = await jay.expect("cursor_moved")
        assert moved["data"]["position"] == {"x": 3, "y": 4} and len(moved["data"]["positions"]) == 2
        await jay.send("cursor_position", {"canvasId": "m2", "position": {"x": 10, "y": -20.5}})
        frame = await mia.expect(where=lambda m: isinstance(m, bytes))
        assert frame[0] == 0x11 and frame[1] == 0  # active
        x, y = struct.unpack(">ff", frame[2:10])
        assert (x, y) == (10, -20.5)
        rest = frame[10:]
        strings = []
        for _ in range(3):
            strings.append(rest[1 : 1 + rest[0]].decode())
            rest = rest[1 + rest[0] :]
        assert strings == ["m2", "jay", "Jay"] and rest == b""


@pytest.mark.parametrize(
    ("frame", "original_id"),
    [
        (b"\xc1", None),  # never used in MessagePack
        (b"\x92\x01\x02", None),  # an array, not a map
        (msgpack.packb({"id": "b1", "type": "heartbeat", "data": {"x": b"bytes"}}), "b1"),
        (msgpack.packb({"id": "b2", "type": "heartbeat", "data": {"x": 2**60}}), "b2"),
        (msgpack.packb({"id": "b3", "type": "heartbeat", "data": {1: "int key"}}, strict_types=False), None),
        (msgpack.packb({"id": "b4", "type": "nope", "data": {}}), "b4"),
        (b"\x01\x05ab", None),  # truncated compact cursor
        (b"\x91" * 5000 + b"\x00", None),
    ],
    ids=[f"bad{i}" for i in range(8)],
)
async def test_invalid_messagepack_is_invalid_message(server, frame, original_id) -> None:
    async with json_client(server.ws_url, mint(), binary=True) as client:
        await client.send_raw(frame)
        error = await client.error("INVALID_MESSAGE")
        assert error["data"]["original_message_id"] == original_id
        assert (await client.request("heartbeat", {}, "heartbeat_ack"))["type"] == "heartbeat_ack"


async def test_frames_of_the_other_kind_are_invalid(server) -> None:
    async with json_client(server.ws_url, mint(), binary=True) as binary:
        await binary.send_raw('{"type": "heartbeat", "data": {}}')
        assert (await binary.error("INVALID_MESSAGE"))["data"]["message"].startswith("text frames")
    async with json_client(server.ws_url, mint()) as text:
        await text.send_raw(msgpack.packb({"type": "heartbeat", "data": {}}))
        assert "maily.msgpack.v1" in (await text.error("INVALID_MESSAGE"))["data"]["message"]
        assert (await text.request("heartbeat", {}, "heartbeat_ack"))["type"] == "heartbeat_ack"


async def test_unknown_subprotocol_falls_back_to_json(server) -> None:
    url = f"{server.ws_url}/ws?token={mint()}"
    async with websockets.connect(url, subprotocols=["something.else"]) as connection:
        assert connection.subprotocol == "something.else"
        await connection.send('{"type": "heartbeat", "data": {}}')
        assert '"heartbeat_ack"' in await connection.recv()
