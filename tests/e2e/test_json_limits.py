"""Limits of the JSON protocol with their codes: size, rate, channels, connections, idle, users per canvas,
and tokens over time (token_expiring, token_refresh, expiry)."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.conftest import mint
from tests.jsonclient import json_client

pytestmark = pytest.mark.e2e


def _heartbeat_of_size(size: int, message_id: str) -> str:
    frame = json.dumps({"id": message_id, "type": "heartbeat", "data": {"pad": ""}})
    text = frame.replace('"pad": ""', '"pad": "' + "x" * (size - len(frame.encode())) + '"')
    assert len(text.encode()) == size
    return text


async def test_64_kib_message_accepted_one_byte_more_closes_1009(server) -> None:
    async with json_client(server.ws_url, mint()) as client:
        await client.send_raw(_heartbeat_of_size(64 * 1024, "big"))
        assert (await client.expect("heartbeat_ack"))["data"]["timestamp"]
        await client.send_raw(_heartbeat_of_size(64 * 1024 + 1, "too-big"))
        closed = await client.wait_closed()
        assert closed.rcvd.code == 1009


async def test_rate_limit_per_user_over_all_connections(server_factory, sqlite_url) -> None:
    server = await server_factory(
        database_url=sqlite_url, rate_limit_per_s=20, rate_limit_burst=20, rate_limit_close_after=1000
    )
    token = mint("alice")
    async with json_client(server.ws_url, token) as first, json_client(server.ws_url, token) as second:
        await asyncio.sleep(1.2)  # refill after connection_init
        for i in range(20):  # 40 messages of one user against a bucket of 20
            await first.send("heartbeat", {}, id=f"a{i}")
            await second.send("heartbeat", {}, id=f"b{i}")
        limited = await first.error("RATE_LIMITED")
        assert limited["data"]["original_message_id"].startswith("a")
        await second.error("RATE_LIMITED")
        await asyncio.sleep(1.1)
        assert (await first.request("heartbeat", {}, "heartbeat_ack"))["type"] == "heartbeat_ack"
    async with json_client(server.ws_url, mint("bob")) as other:  # another user has a bucket of their own
        assert (await other.request("heartbeat", {}, "heartbeat_ack"))["type"] == "heartbeat_ack"


async def test_persistent_flood_closes_4008(server_factory, sqlite_url) -> None:
    server = await server_factory(
        database_url=sqlite_url, rate_limit_per_s=20, rate_limit_burst=20, rate_limit_close_after=30
    )
    async with json_client(server.ws_url, mint()) as client:
        for i in range(200):
            try:
                await client.send("heartbeat", {}, id=i)
            except websockets.ConnectionClosed:
                break
        closed = await client.wait_closed()
        assert closed.rcvd.code == 4008
        assert client.unconsumed("error")[0]["data"]["code"] == "RATE_LIMITED"


async def test_channel_limit(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, max_channels_per_connection=3)
    async with json_client(server.ws_url, mint()) as client:
        for channel in ("canvas:a", "canvas:a:cursor", "canvas:b"):
            await client.subscribe(channel)
        reply = await client.request("subscribe", {"channel": "canvas:c"}, "subscribed")
        assert reply["data"]["code"] == "SUBSCRIPTION_FAILED" and reply["data"]["channel"] == "canvas:c"
        await client.request("unsubscribe", {"channel": "canvas:b"}, "unsubscribed")
        await client.subscribe("canvas:c")


async def test_default_channel_limit_is_100(server) -> None:
    async with json_client(server.ws_url, mint("alice", {"ai_mesh:*": "read"})) as client:
        for i in range(100):
            await client.send("subscribe", {"channel": f"ai_mesh:m{i}"})
        for _ in range(100):
            await client.expect("subscribed")
        reply = await client.request("subscribe", {"channel": "ai_mesh:one-more"}, "subscribed")
        assert reply["data"]["code"] == "SUBSCRIPTION_FAILED"


async def test_connection_limit_closes_4009(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, max_connections_per_user=2)
    token = mint("alice")
    async with json_client(server.ws_url, token), json_client(server.ws_url, token):
        async with json_client(server.ws_url, token, init=False) as third:
            closed = await third.wait_closed()
            assert closed.rcvd.code == 4009
        async with json_client(server.ws_url, mint("bob")) as other:
            assert (await other.request("heartbeat", {}, "heartbeat_ack"))["type"] == "heartbeat_ack"
    await asyncio.sleep(0.1)
    async with json_client(server.ws_url, token) as again:
        assert (await again.request("heartbeat", {}, "heartbeat_ack"))["type"] == "heartbeat_ack"


async def test_idle_timeout_closes_4010_and_heartbeats_keep_alive(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, idle_timeout_s=0.6)
    async with (
        json_client(server.ws_url, mint("idle")) as idle,
        json_client(server.ws_url, mint("busy")) as busy,
    ):
        for _ in range(8):
            await busy.send("heartbeat", {})
            await asyncio.sleep(0.2)
        closed = await idle.wait_closed()
        assert closed.rcvd.code == 4010
        assert (await busy.request("heartbeat", {}, "heartbeat_ack"))["type"] == "heartbeat_ack"


async def test_users_per_canvas(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, max_users_per_canvas=2)
    async with (
        json_client(server.ws_url, mint("u1")) as u1,
        json_client(server.ws_url, mint("u2")) as u2,
        json_client(server.ws_url, mint("u2")) as u2_again,
        json_client(server.ws_url, mint("u3")) as u3,
    ):
        await u1.subscribe("canvas:full")
        await u2.subscribe("canvas:full")
        await u2_again.subscribe("canvas:full:cursor")  # the same user again is no new participant
        reply = await u3.request("subscribe", {"channel": "canvas:full"}, "subscribed")
        assert reply["data"]["code"] == "SUBSCRIPTION_FAILED"


async def test_token_expiring_then_refresh_keeps_the_session(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, token_expiring_before_s=2.5, jwt_leeway_s=0)
    async with json_client(server.ws_url, mint("alice", ttl=3)) as client:
        warning = await client.expect("token_expiring", timeout=3)
        assert warning["data"]["expiresInMs"] <= 3000 and warning["data"]["expiresAt"].endswith("Z")
        reply = await client.request("token_refresh", {"token": mint("alice", ttl=600)}, "token_refreshed")
        assert reply["type"] == "token_refreshed"
        await asyncio.sleep(3.2)
        assert (await client.request("heartbeat", {}, "heartbeat_ack"))["type"] == "heartbeat_ack"


async def test_expiry_without_refresh_closes_4001(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, token_expiring_before_s=1, jwt_leeway_s=0)
    async with json_client(server.ws_url, mint("alice", ttl=2)) as client:
        await client.expect("token_expiring", timeout=3)
        error = await client.error("AUTH_FAILED", timeout=4)
        assert "expired" in error["data"]["message"]
        closed = await client.wait_closed()
        assert closed.rcvd.code == 4001
