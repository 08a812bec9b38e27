"""History and resumption: subscribe with since/history, connection_init.resume, and when it cannot."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import mint
from tests.jsonclient import json_client

pytestmark = pytest.mark.e2e


def _add(element_id: str) -> dict:
    return {"canvasId": "r1", "action": "add", "elementId": element_id, "properties": {"type": "rect"}}


async def test_resume_replays_exactly_what_was_missed(server) -> None:
    token = mint("alice")
    async with json_client(server.ws_url, token) as alice:
        session_id = alice.session_id
        await alice.subscribe("canvas:r1")
        await alice.subscribe("user:alice:notifications")
        async with json_client(server.ws_url, mint("bob")) as bob:
            await bob.request("canvas_update", _add("before"), "ack")
            seen = await alice.expect("canvas_updated")
            last_seen = seen["offset"]
    # alice is away: two more edits and a notification
    async with json_client(server.ws_url, mint("bob")) as bob:
        for element_id in ("away1", "away2"):
            await bob.request("canvas_update", _add(element_id), "ack")
    await server.node.gateway.publish(
        "user:alice:notifications", "notification", {"kind": "k", "title": "t", "body": "b"}
    )
    resume = {"resume": {"sessionId": session_id, "offsets": {"canvas:r1": last_seen}}}
    async with json_client(server.ws_url, token, init_data=resume) as again:
        ack = again.received[0]
        assert ack["data"]["resumed"] is True and ack["sessionId"] == session_id
        assert ack["data"]["subscriptions"] == ["canvas:r1", "user:alice:notifications"]
        note = await again.expect("notification")
        assert note["data"]["title"] == "t"
        replayed = []
        while len(replayed) < 2:
            message = await again.expect("canvas_updated")
            replayed.append(message)
        assert [m["data"]["elementId"] for m in replayed] == ["away1", "away2"]
        offsets = [m["offset"] for m in replayed]
        assert offsets == sorted(offsets) and offsets[0] > last_seen
        await asyncio.sleep(0.2)
        assert not again.unconsumed("canvas_updated")  # nothing twice
        # and live again
        async with json_client(server.ws_url, mint("bob")) as bob:
            await bob.request("canvas_update", _add("live"), "ack")
        live = await again.expect("canvas_updated")
        assert live["data"]["elementId"] == "live"


async def test_resume_refused_for_unknown_session_or_another_user(server) -> None:
    async with json_client(server.ws_url, mint("alice")) as alice:
        session_id = alice.session_id
        await alice.subscribe("canvas:r1")
    for token, sid in ((mint("mallory"), session_id), (mint("alice"), "sess_unknown")):
        init = {"resume": {"sessionId": sid, "offsets": {}}}
        async with json_client(server.ws_url, token, init_data=init) as other:
            ack = other.received[0]
            assert ack["data"]["resumed"] is False and ack["sessionId"] != sid


async def test_resume_after_session_ttl_is_refused(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, session_ttl_s=0.3)
    token = mint("alice")
    async with json_client(server.ws_url, token) as alice:
        session_id = alice.session_id
    await asyncio.sleep(0.5)
    async with json_client(server.ws_url, token, init_data={"resume": {"sessionId": session_id}}) as again:
        assert again.received[0]["data"]["resumed"] is False


async def test_resume_gap_beyond_history_is_subscription_failed(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, history_max_per_channel=2)
    token = mint("alice")
    async with json_client(server.ws_url, token) as alice:
        session_id = alice.session_id
        reply = await alice.subscribe("canvas:r1")
        offset = reply["data"]["offset"]
    async with json_client(server.ws_url, mint("bob")) as bob:
        for i in range(5):
            await bob.request("canvas_update", _add(f"e{i}"), "ack")
    init = {"resume": {"sessionId": session_id, "offsets": {"canvas:r1": offset}}}
    async with json_client(server.ws_url, token, init_data=init) as again:
        assert again.received[0]["data"]["resumed"] is True
        error = await again.error("SUBSCRIPTION_FAILED")
        assert error["data"]["channel"] == "canvas:r1"
        assert not again.unconsumed("canvas_updated")


async def test_resume_takes_over_a_live_session(server) -> None:
    token = mint("alice")
    async with json_client(server.ws_url, token) as old:
        await old.subscribe("canvas:r1")
        init = {"resume": {"sessionId": old.session_id}}
        async with json_client(server.ws_url, token, init_data=init) as new:
            assert new.received[0]["data"]["resumed"] is True
            assert new.received[0]["data"]["subscriptions"] == ["canvas:r1"]
            closed = await old.wait_closed()
            assert closed.rcvd.code == 1000


async def test_subscribe_with_since_and_with_history(server) -> None:
    async with json_client(server.ws_url, mint("bob")) as bob:
        await bob.subscribe("canvas:r1")
        acks = [await bob.request("canvas_update", _add(f"h{i}"), "ack") for i in range(3)]
    first_offset = acks[0]["data"]["offset"]
    async with json_client(server.ws_url, mint("alice")) as alice:
        reply = await alice.subscribe("canvas:r1", since=first_offset)
        epoch = reply["data"]["epoch"]
        got = [await alice.expect("canvas_updated") for _ in range(2)]
        assert [m["data"]["elementId"] for m in got] == ["h1", "h2"]
        await alice.request("unsubscribe", {"channel": "canvas:r1"}, "unsubscribed")
        reply = await alice.subscribe("canvas:r1", history=True)
        assert len([await alice.expect("canvas_updated") for _ in range(3)]) == 3
        await alice.request("unsubscribe", {"channel": "canvas:r1"}, "unsubscribed")
        stale = {"channel": "canvas:r1", "options": {"since": {"offset": 1, "epoch": "not-" + epoch}}}
        reply = await alice.request("subscribe", stale, "subscribed")
        assert reply["data"]["code"] == "SUBSCRIPTION_FAILED"
        ahead = {"channel": "canvas:r1", "options": {"since": 10_000}}
        assert (await alice.request("subscribe", ahead, "subscribed"))["data"][
            "code"
        ] == "SUBSCRIPTION_FAILED"


async def test_resume_with_a_malformed_offset_is_refused_and_can_be_retried(server) -> None:
    """A bad offset is INVALID_MESSAGE before anything is taken: the session stays resumable."""
    token = mint("alice")
    async with json_client(server.ws_url, token) as alice:
        session_id = alice.session_id
        await alice.subscribe("canvas:r1")
        await alice.subscribe("canvas:r2")
    bad = {"resume": {"sessionId": session_id, "offsets": {"canvas:r1": "oops"}}}
    async with json_client(server.ws_url, token, init=False) as again:
        await again.send("connection_init", bad, id="init1")
        error = await again.error("INVALID_MESSAGE")
        assert error["data"]["original_message_id"] == "init1"
        assert not again.unconsumed("connection_ack")
        await again.send("connection_init", {"resume": {"sessionId": session_id, "offsets": {}}})
        ack = await again.expect("connection_ack")
        assert ack["data"]["resumed"] is True
        assert ack["data"]["subscriptions"] == ["canvas:r1", "canvas:r2"]
