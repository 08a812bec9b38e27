"""Several real node processes sharing a private Redis and a PostgreSQL database: the JSON channel
protocol across nodes (issue #4 part A).

Publications cross nodes with one offset sequence; a session resumes on another node with exactly
what it missed (or is told it cannot); presence, the connection limit and the rate limit hold over
all nodes; server-side publish reaches every node; and a Redis outage neither stops a node nor loses
anything acknowledged.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, mint
from tests.jsonclient import json_client
from tests.redisserver import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

API_KEY = "multinode-test-key"
FAST_ENV = {
    "MAILY_REDIS_PROBE_INTERVAL_S": "0.2",
    "MAILY_REDIS_PROBE_DEADLINE_S": "1.5",
    "MAILY_REDIS_TIMEOUT_S": "0.5",
    "MAILY_PRESENCE_LEASE_S": "3",
    "MAILY_UNLOAD_GRACE_S": "0.5",
}


def _add(canvas_id: str, element_id: str) -> dict[str, Any]:
    return {"canvasId": canvas_id, "action": "add", "elementId": element_id, "properties": {"type": "rect"}}


@pytest.fixture
async def cluster(
    server_processes: Callable[..., Any], server_database_url: str, redis_prefix: str
) -> Callable[..., Any]:
    """``await cluster(redis_url, n, **env)``: ``n`` nodes on that Redis and the shared PostgreSQL."""

    async def start(redis_url: str, n: int = 2, **env: str) -> list[ServerProcess]:
        base = {
            "MAILY_REDIS_URL": redis_url,
            "MAILY_REDIS_PREFIX": redis_prefix,
            "MAILY_DATABASE_URL": server_database_url,
            "MAILY_AUTO_MIGRATE": "false",
            "MAILY_API_KEY": API_KEY,
            **FAST_ENV,
            **env,
        }
        return list(
            await asyncio.gather(
                *(
                    server_processes(MAILY_NODE_ID=f"node-{i}-{secrets.token_hex(2)}", **base)
                    for i in range(n)
                )
            )
        )

    return start


@pytest.fixture
def database_url(pg_database_url: str) -> str:
    """Only PostgreSQL: it is the store the nodes share."""
    return pg_database_url


async def _publish(node: ServerProcess, channel: str, data: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(
            f"{node.http_url}/api/v1/channels/{channel}/publish",
            json={"type": "notification", "data": data},
            headers={"X-API-Key": API_KEY},
        )


async def test_publications_and_presence_cross_nodes(cluster, redis_url) -> None:
    a, b, c = await cluster(redis_url, 3)
    async with (
        json_client(a.ws_url, mint("alice")) as alice,
        json_client(b.ws_url, mint("bob")) as bob,
        json_client(c.ws_url, mint("carol")) as carol,
    ):
        first = await alice.subscribe("canvas:m1")
        assert first["data"]["participantCount"] == 1
        on_b = await bob.subscribe("canvas:m1")
        assert on_b["data"]["participantCount"] == 2  # alice is on another node
        assert on_b["data"]["epoch"] == first["data"]["epoch"]
        await carol.subscribe("canvas:m1")
        joined = await alice.expect("presence", lambda m: m["data"]["user"]["id"] == "bob")
        assert joined["data"]["event"] == "join" and joined["data"]["participants"] == 2

        ack = await alice.request("canvas_update", _add("m1", "r1"), "ack")
        offset = ack["data"]["offset"]
        for client in (bob, carol):
            seen = await client.expect("canvas_updated", lambda m: m["data"].get("elementId") == "r1")
            assert seen["offset"] == offset and seen["channel"] == "canvas:m1"
        ack2 = await bob.request("canvas_update", _add("m1", "r2"), "ack")
        assert ack2["data"]["offset"] > offset  # one offset sequence for all nodes
        assert (await alice.expect("canvas_updated", lambda m: m["data"].get("elementId") == "r2"))[
            "offset"
        ] == ack2["data"]["offset"]

        # server-side publish on node C reaches a subscriber on node A, with the offset it returned
        await alice.subscribe("user:alice:notifications")
        response = await _publish(c, "user:alice:notifications", {"kind": "k", "title": "t", "body": "b"})
        assert response.status_code == 202, response.text
        body = response.json()
        note = await alice.expect("notification")
        assert note["offset"] == body["offset"] and note["channel"] == body["channel"] and body["epoch"]

        # cursors cross nodes too
        await carol.send("cursor_position", {"canvasId": "m1", "position": {"x": 3, "y": 4}})
        await alice.subscribe("canvas:m1:cursor")
        await carol.send("cursor_position", {"canvasId": "m1", "position": {"x": 5, "y": 6}})
        moved = await alice.expect("cursor_moved")
        assert moved["data"]["user"]["id"] == "carol"

        # a node that dies takes its participants with it once their lease runs out
        await c.kill()
        await asyncio.sleep(float(FAST_ENV["MAILY_PRESENCE_LEASE_S"]) + 0.5)
        async with json_client(b.ws_url, mint("dave")) as dave:
            assert (await dave.subscribe("canvas:m1"))["data"]["participantCount"] == 3  # alice, bob, dave

    async with httpx.AsyncClient(timeout=5) as http:
        ready = await http.get(f"{a.http_url}/readyz")
    assert ready.json()["checks"]["redis"] == "ok"


async def test_resume_on_another_node_replays_exactly_what_was_missed(cluster, redis_url) -> None:
    a, b = await cluster(redis_url, 2)
    token = mint("alice")
    async with json_client(a.ws_url, token) as alice:
        session_id = alice.session_id
        await alice.subscribe("canvas:m2")
        async with json_client(b.ws_url, mint("bob")) as bob:
            await bob.subscribe("canvas:m2")
            await bob.request("canvas_update", _add("m2", "before"), "ack")
            last_seen = (await alice.expect("canvas_updated"))["offset"]
    async with json_client(b.ws_url, mint("bob")) as bob:
        for element_id in ("away1", "away2", "away3"):
            await bob.request("canvas_update", _add("m2", element_id), "ack")
    resume = {"resume": {"sessionId": session_id, "offsets": {"canvas:m2": last_seen}}}
    async with json_client(b.ws_url, token, init_data=resume) as again:  # node B, not A
        ack = again.received[0]
        assert ack["data"]["resumed"] is True and ack["sessionId"] == session_id
        assert ack["data"]["subscriptions"] == ["canvas:m2"]
        replayed = [await again.expect("canvas_updated") for _ in range(3)]
        assert [m["data"]["elementId"] for m in replayed] == ["away1", "away2", "away3"]
        offsets = [m["offset"] for m in replayed]
        assert offsets == sorted(set(offsets)) and offsets[0] > last_seen
        await asyncio.sleep(0.3)
        assert not again.unconsumed("canvas_updated")  # nothing twice
        async with json_client(a.ws_url, mint("bob")) as bob:  # live again, from the other node
            await bob.request("canvas_update", _add("m2", "live"), "ack")
        live = await again.expect("canvas_updated", lambda m: m["data"]["elementId"] == "live")
        assert live["offset"] > replayed[-1]["offset"]
    # a session is taken once: resuming it again (it was parked again on close) works, an unknown one not
    async with json_client(a.ws_url, token, init_data={"resume": {"sessionId": "sess_nope"}}) as other:
        assert other.received[0]["data"]["resumed"] is False


async def test_resume_on_another_node_takes_over_a_connected_session(cluster, redis_url) -> None:
    a, b = await cluster(redis_url, 2)
    token = mint("alice")
    async with json_client(a.ws_url, token) as old:
        await old.subscribe("canvas:m4")
        init = {"resume": {"sessionId": old.session_id}}
        async with json_client(b.ws_url, token, init_data=init) as new:  # old is still connected to A
            ack = new.received[0]
            assert ack["data"]["resumed"] is True and ack["sessionId"] == old.session_id
            assert ack["data"]["subscriptions"] == ["canvas:m4"]
            closed = await old.wait_closed()
            assert closed.rcvd.code == 1000
            async with json_client(a.ws_url, mint("bob")) as bob:
                await bob.request("canvas_update", _add("m4", "after"), "ack")
            assert (await new.expect("canvas_updated"))["data"]["elementId"] == "after"
    async with json_client(a.ws_url, mint("mallory"), init_data=init) as other:  # never another user's
        assert other.received[0]["data"]["resumed"] is False


async def test_resume_after_the_node_died_replays_what_the_client_names(cluster, redis_url) -> None:
    a, b = await cluster(redis_url, 2)
    token = mint("alice")
    async with json_client(a.ws_url, token) as alice:
        session_id = alice.session_id
        offset = (await alice.subscribe("canvas:m6"))["data"]["offset"]
        await alice.subscribe("user:alice:notifications")
        await a.kill()  # SIGKILL: the session is never parked
        await alice.wait_closed()
    async with json_client(b.ws_url, mint("bob")) as bob:
        for element_id in ("x1", "x2"):
            await bob.request("canvas_update", _add("m6", element_id), "ack")
    init = {"resume": {"sessionId": session_id, "offsets": {"canvas:m6": offset}}}
    async with json_client(b.ws_url, token, init_data=init) as again:
        ack = again.received[0]
        assert ack["data"]["resumed"] is True and ack["sessionId"] == session_id
        assert ack["data"]["subscriptions"] == ["canvas:m6", "user:alice:notifications"]
        replayed = [await again.expect("canvas_updated") for _ in range(2)]
        assert [m["data"]["elementId"] for m in replayed] == ["x1", "x2"]
        # where the dead node's delivery stood on the other channel is unknown: refused, never guessed
        refused = await again.error("SUBSCRIPTION_FAILED")
        assert refused["data"]["channel"] == "user:alice:notifications"


async def test_resume_past_the_retained_history_is_refused(cluster, redis_url) -> None:
    a, b = await cluster(redis_url, 2, MAILY_HISTORY_MAX_PER_CHANNEL="2")
    token = mint("alice")
    async with json_client(a.ws_url, token) as alice:
        session_id = alice.session_id
        offset = (await alice.subscribe("canvas:m3"))["data"]["offset"]
    async with json_client(a.ws_url, mint("bob")) as bob:
        for i in range(5):
            await bob.request("canvas_update", _add("m3", f"e{i}"), "ack")
    init = {"resume": {"sessionId": session_id, "offsets": {"canvas:m3": offset}}}
    async with json_client(b.ws_url, token, init_data=init) as again:
        error = await again.error("SUBSCRIPTION_FAILED")
        assert error["data"]["channel"] == "canvas:m3"
        await asyncio.sleep(0.2)
        assert not again.unconsumed("canvas_updated")  # never a partial replay


async def test_connection_limit_and_rate_limit_hold_across_nodes(cluster, redis_url) -> None:
    a, b = await cluster(
        redis_url,
        2,
        MAILY_MAX_CONNECTIONS_PER_USER="3",
        MAILY_RATE_LIMIT_PER_S="20",
        MAILY_RATE_LIMIT_BURST="20",
        MAILY_RATE_LIMIT_CLOSE_AFTER="100000",
    )
    token = mint("dave")
    async with (
        json_client(a.ws_url, token) as c1,
        json_client(a.ws_url, token),
        json_client(b.ws_url, token) as c3,
    ):
        for node in (a, b):
            async with json_client(node.ws_url, token, init=False) as extra:
                closed = await extra.wait_closed()
                assert closed.rcvd.code == 4009
        # the rate: both nodes flood for 2 s; together they get about one user's budget, not two
        accepted = 0
        deadline = time.monotonic() + 2.0

        async def flood(client: Any) -> None:
            while time.monotonic() < deadline:
                await client.send("heartbeat", {})
                await asyncio.sleep(0.002)

        await asyncio.gather(flood(c1), flood(c3))
        await asyncio.sleep(0.5)
        accepted = len(c1.unconsumed("heartbeat_ack")) + len(c3.unconsumed("heartbeat_ack"))
        refused = len(c1.unconsumed("error")) + len(c3.unconsumed("error"))
        single_node_budget = 20 + 20 * 2.5  # burst + rate over the flood (and the settling after)
        assert refused > 0
        assert 20 <= accepted <= single_node_budget * 1.4, (accepted, refused)
    # the connections are released on every node: a new one is admitted again
    async with json_client(b.ws_url, token) as again:
        assert again.session_id


async def test_redis_outage_nodes_serve_locally_and_converge(cluster, redis_server: RedisServer) -> None:
    a, b = await cluster(redis_server.url, 2)
    async with (
        json_client(a.ws_url, mint("alice")) as alice,
        json_client(a.ws_url, mint("anna")) as anna,
        json_client(b.ws_url, mint("bob")) as bob,
    ):
        for client in (alice, anna, bob):
            await client.subscribe("canvas:f")
            await client.subscribe(f"user:{client_user(client)}:notifications")
        # acknowledged publications before the outage reach the other node
        acked_before = []
        for i in range(3):
            response = await _publish(
                a, "user:bob:notifications", {"kind": "k", "title": f"n{i}", "body": ""}
            )
            assert response.status_code == 202
            acked_before.append(response.json()["offset"])
        got = [await bob.expect("notification") for _ in range(3)]
        assert [m["offset"] for m in got] == acked_before

        # cross-node load keeps going through the outage
        acks: dict[str, list[str]] = {"a": [], "b": []}
        stop = asyncio.Event()

        async def load(client: Any, tag: str) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                element_id = f"{tag}{n}"
                reply = await client.request("canvas_update", _add("f", element_id), "ack")
                if reply["type"] == "ack":
                    acks[tag].append(element_id)
                await asyncio.sleep(0.1)

        loaders = [asyncio.create_task(load(alice, "a")), asyncio.create_task(load(bob, "b"))]
        await asyncio.sleep(0.5)
        await redis_server.akill()
        outage_start = time.monotonic()
        try:
            await asyncio.sleep(1.5)
            async with httpx.AsyncClient(timeout=5) as http:
                for node in (a, b):
                    assert (await http.get(f"{node.http_url}/healthz")).status_code == 200
                    ready = await http.get(f"{node.http_url}/readyz")
                    assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "unavailable"
            began = time.monotonic()
            refused = await _publish(a, "user:bob:notifications", {"kind": "k", "title": "x", "body": ""})
            assert refused.status_code == 503 and time.monotonic() - began < 2.0  # fails fast
            # the node serves its local clients: anna sees alice's edits at once, unnumbered
            during = len(acks["a"])
            local = await anna.expect(
                "canvas_updated", lambda m: m["offset"] is None and m["data"]["elementId"] == f"a{during + 1}"
            )
            assert local["data"]["user"]["id"] == "alice"
            await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - outage_start)))
        finally:
            await redis_server.astart()
        back = time.monotonic()
        # Redis came back empty: every subscription is told its history was lost, and can subscribe again
        for client in (alice, anna, bob):
            lost = await client.expect(
                "error",
                lambda m: m["data"]["code"] == "SUBSCRIPTION_FAILED" and m["data"]["channel"] == "canvas:f",
                timeout=10,
            )
            assert lost["data"]["channel"] == "canvas:f"
        stop.set()
        await asyncio.gather(*loaders)
        for client in (alice, anna, bob):
            await client.subscribe("canvas:f")
        ack = await alice.request("canvas_update", _add("f", "after"), "ack")
        seen = await bob.expect("canvas_updated", lambda m: m["data"]["elementId"] == "after", timeout=10)
        assert seen["offset"] == ack["data"]["offset"]
        assert time.monotonic() - back < 10.0
        response = await _publish(a, "user:bob:notifications", {"kind": "k", "title": "after", "body": ""})
        assert response.status_code == 202
    # nothing acknowledged was lost: every acknowledged edit is in the document its node serves
    async with httpx.AsyncClient(timeout=10) as http:
        for node, tag in ((a, "a"), (b, "b")):
            reply = await http.get(
                f"{node.http_url}/api/v1/canvases/f", headers={"Authorization": f"Bearer {mint('alice')}"}
            )
            assert reply.status_code == 200, reply.text
            elements = reply.json()["elements"]
            missing = [e for e in acks[tag] if e not in elements]
            assert not missing, missing
    assert len(acks["a"]) > 50 and len(acks["b"]) > 50  # the load went on through the outage


def client_user(client: Any) -> str:
    return client.received[0]["data"]["userId"]
