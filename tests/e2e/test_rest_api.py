"""The REST API against a real uvicorn server, on SQLite and on PostgreSQL, with real pycrdt editors.

Canvases as JSON (live and stored), snapshots, diffs, restore (idempotent, undoable, racing with edits),
activity, listing with permissions and pagination, delete, automatic snapshots, errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from pycrdt import Doc, Map

from crdt.canvas import to_json
from crdt.versions import version_json
from tests.conftest import RunningServer, mint
from tests.jsonclient import JsonClient, json_client
from tests.yclient import elements, eventually, yjs_client

pytestmark = pytest.mark.e2e

ADMIN = {"canvas:*": "admin"}
API_KEY = "rest-test-api-key-0123456789"


@pytest.fixture
async def rest_server(server_factory, server_database_url: str) -> RunningServer:
    return await server_factory(database_url=server_database_url, auto_migrate=False, api_key=API_KEY)


@pytest.fixture
async def http(rest_server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=rest_server.http_url, timeout=10) as client:
        yield client


def auth(sub: str = "admin", perms: dict[str, str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(sub, perms or ADMIN)}"}


def canvas_of(doc: Doc) -> dict[str, Any]:
    return to_json(doc)


def body_of(canvas: dict[str, Any]) -> dict[str, Any]:
    return {key: canvas[key] for key in ("elements", "layers", "meta")}


async def snapshot(http: httpx.AsyncClient, canvas_id: str, label: str | None = None) -> dict[str, Any]:
    response = await http.post(
        f"/api/v1/canvases/{canvas_id}/snapshots", json={"label": label}, headers=auth()
    )
    assert response.status_code == 201, response.text
    return response.json()


async def restore(http: httpx.AsyncClient, canvas_id: str, snapshot_id: str) -> dict[str, Any]:
    response = await http.post(
        f"/api/v1/canvases/{canvas_id}/snapshots/{snapshot_id}/restore", headers=auth()
    )
    assert response.status_code == 200, response.text
    return response.json()


def draw(doc: Doc, **items: dict[str, Any]) -> None:
    with doc.transaction():
        for element_id, properties in items.items():
            elements(doc)[element_id] = Map({"id": element_id, **properties})


async def test_errors_are_json_with_a_stable_code_and_the_field(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/v1/canvases/c1")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AUTH_FAILED"
    assert response.headers["www-authenticate"] == "Bearer"

    response = await http.get("/api/v1/canvases/c1", headers={"Authorization": "Bearer not-a-jwt"})
    assert response.status_code == 401

    response = await http.get("/api/v1/canvases/bad%20id", headers=auth())
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "VALIDATION_FAILED"
    assert response.json()["error"]["field"] == "path.canvas_id"

    response = await http.get("/api/v1/canvases", params={"limit": 0}, headers=auth())
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "query.limit"

    response = await http.post("/api/v1/canvases/c1/snapshots", json={"label": "x" * 201}, headers=auth())
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "body.label"

    response = await http.get("/api/v1/canvases/nothing-here", headers=auth())
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"

    response = await http.get("/api/v1/no-such-route", headers=auth())
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"

    reader = auth("reader", {"canvas:c1": "read"})
    for method, path in (
        ("POST", "/api/v1/canvases/c1/snapshots"),
        ("POST", "/api/v1/canvases/c1/snapshots/snp_0000000000000000/restore"),
        ("DELETE", "/api/v1/canvases/c1"),
        ("GET", "/api/v1/canvases/other"),
    ):
        response = await http.request(method, path, headers=reader)
        assert response.status_code == 403, (method, path)
        assert response.json()["error"]["code"] == "FORBIDDEN"


async def test_canvas_json_from_the_live_document_then_from_storage(
    rest_server: RunningServer, http: httpx.AsyncClient
) -> None:
    async with yjs_client(rest_server.ws_url, "live1", mint("alice")) as (doc, _, _):
        draw(doc, e1={"type": "rect", "x": 10, "y": 20, "fill": "#fff", "custom": {"k": [1, 2]}})
        doc.get("meta", type=Map)["title"] = "Hello"
        await eventually(lambda: rest_server.node.rooms.get("live1") is not None)
        await eventually(lambda: "e1" in to_json(rest_server.node.rooms.get("live1").doc)["elements"])
        response = await http.get("/api/v1/canvases/live1", headers=auth("bob", {"canvas:live1": "read"}))
        assert response.status_code == 200
        live = response.json()
        assert live["source"] == "live"
        assert live["canvasId"] == "live1"
        assert body_of(live) == canvas_of(doc)
        assert live["elements"]["e1"]["custom"] == {"k": [1, 2]}  # unknown fields are kept
    await eventually(lambda: rest_server.node.rooms.get("live1") is None)
    stored = (await http.get("/api/v1/canvases/live1", headers=auth())).json()
    assert stored["source"] == "stored"
    assert body_of(stored) == body_of(live)


async def test_snapshot_list_get_diff_restore_and_undo(
    rest_server: RunningServer, http: httpx.AsyncClient
) -> None:
    async with yjs_client(rest_server.ws_url, "flow", mint("alice")) as (doc, _, _):
        draw(doc, e1={"type": "rect", "x": 1}, e2={"type": "text", "text": "hi"})
        await eventually(lambda: rest_server.node.rooms.get("flow") is not None)
        await eventually(lambda: len(to_json(rest_server.node.rooms.get("flow").doc)["elements"]) == 2)
        version1 = canvas_of(doc)
        v1 = await snapshot(http, "flow", "first")
        assert v1["label"] == "first" and v1["kind"] == "manual" and v1["authorId"] == "admin"
        assert v1["sizeBytes"] > 0 and v1["createdAt"]

        # change things: move e1, delete e2, add e3
        elements(doc)["e1"]["x"] = 99
        del elements(doc)["e2"]
        draw(doc, e3={"type": "ellipse"})
        await eventually(lambda: "e3" in to_json(rest_server.node.rooms.get("flow").doc)["elements"])
        changed = canvas_of(doc)

        listing = (await http.get("/api/v1/canvases/flow/snapshots", headers=auth())).json()
        assert [item["id"] for item in listing["items"]] == [v1["id"]]
        assert listing["nextCursor"] is None

        got = (await http.get(f"/api/v1/canvases/flow/snapshots/{v1['id']}", headers=auth())).json()
        assert got["snapshot"]["id"] == v1["id"]
        assert body_of(got) == version1

        diff = (await http.get(f"/api/v1/canvases/flow/snapshots/{v1['id']}/diff", headers=auth())).json()
        assert diff["from"] == v1["id"] and diff["to"] == "now" and diff["equal"] is False
        assert list(diff["elements"]["added"]) == ["e3"]
        assert list(diff["elements"]["removed"]) == ["e2"]
        assert diff["elements"]["changed"] == {"e1": {"x": {"kind": "changed", "before": 1, "after": 99}}}

        result = await restore(http, "flow", v1["id"])
        assert result["changed"] is True and result["writes"] == 3
        undo_id = result["preRestoreSnapshotId"]
        await eventually(lambda: canvas_of(doc) == version1)
        assert body_of((await http.get("/api/v1/canvases/flow", headers=auth())).json()) == version1

        # the same version again: nothing changes, no update is sent, no new undo snapshot
        received_before = rest_server.node.rooms.get("flow").doc.get_state()
        again = await restore(http, "flow", v1["id"])
        assert again == {**again, "changed": False, "writes": 0, "preRestoreSnapshotId": None}
        assert rest_server.node.rooms.get("flow").doc.get_state() == received_before

        # the pre-restore snapshot undoes the restore
        kinds = {
            item["id"]: item["kind"]
            for item in (await http.get("/api/v1/canvases/flow/snapshots", headers=auth())).json()["items"]
        }
        assert kinds == {v1["id"]: "manual", undo_id: "pre_restore"}
        diff = (
            await http.get(
                f"/api/v1/canvases/flow/snapshots/{v1['id']}/diff", params={"to": undo_id}, headers=auth()
            )
        ).json()
        assert list(diff["elements"]["added"]) == ["e3"]
        await restore(http, "flow", undo_id)
        await eventually(lambda: canvas_of(doc) == changed)


async def test_restore_reaches_every_connected_editor(
    rest_server: RunningServer, http: httpx.AsyncClient
) -> None:
    url = rest_server.ws_url
    async with (
        yjs_client(url, "shared", mint("alice")) as (alice, _, _),
        yjs_client(url, "shared", mint("bob")) as (
            bob,
            _,
            _,
        ),
    ):
        draw(alice, e1={"type": "rect", "x": 1, "y": 1}, e2={"type": "rect", "x": 2})
        await eventually(lambda: canvas_of(bob) == canvas_of(alice))
        v1 = await snapshot(http, "shared", "before the mess")
        version = canvas_of(alice)
        elements(alice)["e1"]["x"] = 500
        draw(bob, e9={"type": "text", "text": "new"})
        del elements(bob)["e2"]
        await eventually(lambda: canvas_of(bob) == canvas_of(alice) != version)

        await restore(http, "shared", v1["id"])
        await eventually(lambda: canvas_of(alice) == version and canvas_of(bob) == version)
        assert to_json(rest_server.node.rooms.get("shared").doc) == version


async def test_restore_racing_with_live_edits_converges(
    rest_server: RunningServer, http: httpx.AsyncClient
) -> None:
    url = rest_server.ws_url
    async with (
        yjs_client(url, "race", mint("alice")) as (alice, _, _),
        yjs_client(url, "race", mint("bob")) as (
            bob,
            _,
            _,
        ),
    ):
        draw(alice, **{f"e{i}": {"type": "rect", "x": i} for i in range(20)})
        await eventually(lambda: len(elements(bob)) == 20)
        v1 = await snapshot(http, "race")

        async def edit(doc: Doc, prefix: str) -> None:
            for step in range(40):
                with doc.transaction():
                    elements(doc)[f"e{step % 20}"]["x"] = step
                    elements(doc)[f"{prefix}{step}"] = Map({"type": "line"})
                await asyncio.sleep(0.005)

        await asyncio.gather(
            edit(alice, "a"), edit(bob, "b"), restore(http, "race", v1["id"]), restore(http, "race", v1["id"])
        )
        room_doc = rest_server.node.rooms.get("race").doc
        await eventually(lambda: canvas_of(alice) == canvas_of(bob) == to_json(room_doc))
        # and a restore with nobody editing lands exactly on the version everywhere
        await restore(http, "race", v1["id"])
        version = body_of(
            (await http.get(f"/api/v1/canvases/race/snapshots/{v1['id']}", headers=auth())).json()
        )
        await eventually(lambda: canvas_of(alice) == canvas_of(bob) == to_json(room_doc) == version)


async def test_activity_lists_who_changed_which_elements(
    rest_server: RunningServer, http: httpx.AsyncClient
) -> None:
    url = rest_server.ws_url
    async with (
        yjs_client(url, "act", mint("alice")) as (alice, _, _),
        yjs_client(url, "act", mint("bob")) as (
            bob,
            _,
            _,
        ),
    ):
        draw(alice, a1={"x": 1})
        await eventually(lambda: "a1" in elements(bob))
        draw(bob, b1={"x": 2})
        await eventually(lambda: "b1" in elements(alice))
        v1 = await snapshot(http, "act")
        elements(alice)["a1"]["x"] = 5
        await eventually(lambda: elements(bob)["a1"]["x"] == 5)
        await restore(http, "act", v1["id"])

    reader = auth("carol", {"canvas:act": "read"})
    response = await http.get("/api/v1/canvases/act/activity", headers=reader)
    assert response.status_code == 200
    items = response.json()["items"]
    assert [(item["userId"], item["elements"]) for item in items] == [
        ("admin", ["a1"]),  # the restore, newest first
        ("alice", ["a1"]),
        ("bob", ["b1"]),
        ("alice", ["a1"]),
    ]
    assert all(item["nodeId"] == "test-node" and item["createdAt"] for item in items)
    # pagination
    first = (await http.get("/api/v1/canvases/act/activity", params={"limit": 3}, headers=reader)).json()
    assert len(first["items"]) == 3 and first["nextCursor"] == str(first["items"][-1]["id"])
    rest = (
        await http.get(
            "/api/v1/canvases/act/activity",
            params={"limit": 3, "cursor": first["nextCursor"]},
            headers=reader,
        )
    ).json()
    assert [item["id"] for item in first["items"] + rest["items"]] == [item["id"] for item in items]
    assert rest["nextCursor"] is None


async def test_list_canvases_shows_only_readable_ones_paginated(
    rest_server: RunningServer, http: httpx.AsyncClient
) -> None:
    for canvas_id in ("ca", "cb", "cc"):
        async with yjs_client(rest_server.ws_url, canvas_id, mint("alice")) as (doc, _, _):
            draw(doc, e1={"x": 1})
            await eventually(lambda canvas_id=canvas_id: rest_server.node.rooms.get(canvas_id) is not None)
    await rest_server.node.update_log.wait_durable()

    everything = (await http.get("/api/v1/canvases", headers=auth("reader", {"canvas:*": "read"}))).json()
    assert [item["canvasId"] for item in everything["items"]] == ["ca", "cb", "cc"]
    some = auth("someone", {"canvas:cb": "read", "canvas:cc:cursor": "read", "user:x": "read"})
    assert [
        item["canvasId"] for item in (await http.get("/api/v1/canvases", headers=some)).json()["items"]
    ] == ["cb"]
    assert (await http.get("/api/v1/canvases", headers=auth("nobody", {"ai_mesh:1": "read"}))).json()[
        "items"
    ] == []

    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await http.get("/api/v1/canvases", params=params, headers=auth())).json()
        seen += [item["canvasId"] for item in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == ["ca", "cb", "cc"]


async def test_delete_disconnects_clients_and_removes_everything(
    rest_server: RunningServer, http: httpx.AsyncClient
) -> None:
    async with yjs_client(rest_server.ws_url, "doomed", mint("alice")) as (doc, _, connection):
        draw(doc, e1={"x": 1})
        await eventually(lambda: rest_server.node.rooms.get("doomed") is not None)
        await snapshot(http, "doomed")
        assert (
            await http.delete("/api/v1/canvases/doomed", headers=auth("w", {"canvas:*": "write"}))
        ).status_code == 403
        response = await http.delete("/api/v1/canvases/doomed", headers=auth())
        assert response.status_code == 204
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                await connection.wait_closed()
                await connection.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
    assert (await http.get("/api/v1/canvases/doomed", headers=auth())).status_code == 404
    assert (await http.get("/api/v1/canvases/doomed/snapshots", headers=auth())).status_code == 404
    assert (await http.delete("/api/v1/canvases/doomed", headers=auth())).status_code == 404
    await asyncio.sleep(0.1)
    assert not await rest_server.node.store.document_exists("doomed")


async def test_openapi_documents_every_route(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    paths = spec["paths"]
    for path, method in (
        ("/api/v1/canvases", "get"),
        ("/api/v1/canvases/{canvas_id}", "get"),
        ("/api/v1/canvases/{canvas_id}", "delete"),
        ("/api/v1/canvases/{canvas_id}/activity", "get"),
        ("/api/v1/canvases/{canvas_id}/snapshots", "post"),
        ("/api/v1/canvases/{canvas_id}/snapshots", "get"),
        ("/api/v1/canvases/{canvas_id}/snapshots/{snapshot_id}", "get"),
        ("/api/v1/canvases/{canvas_id}/snapshots/{snapshot_id}/diff", "get"),
        ("/api/v1/canvases/{canvas_id}/snapshots/{snapshot_id}/restore", "post"),
        ("/api/v1/users/{user_id}/notifications", "post"),
        ("/api/v1/channels/{channel}/publish", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ):
        operation = paths[path][method]
        ok = next(code for code in operation["responses"] if code.startswith("2"))
        if ok != "204":
            assert "schema" in operation["responses"][ok]["content"]["application/json"], (path, method)
        if path.startswith("/api/"):
            assert operation["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
                "ErrorResponse"
            )
    assert (await http.get("/docs")).status_code == 200


async def test_automatic_snapshots_every_n_updates_keep_the_newest(server_factory, sqlite_url) -> None:
    server = await server_factory(
        database_url=sqlite_url, auto_snapshot_every_updates=5, auto_snapshot_keep=2
    )
    auto = server.node.auto_snapshots
    async with yjs_client(server.ws_url, "auto", mint("alice")) as (doc, _, _):
        await eventually(lambda: server.node.rooms.get("auto") is not None)
        live = server.node.rooms.get("auto").doc
        for i in range(16):  # one update at a time: snapshots after the 5th, 10th and 15th
            elements(doc)[f"e{i}"] = Map({"x": i})
            await eventually(lambda i=i: f"e{i}" in live.get("elements", type=Map))
            await eventually(lambda i=i: auto.pending("auto") == (i + 1) % 5)
    listed = await server.node.store.list_snapshots("auto", limit=10, offset=0)
    assert [info.kind for info in listed] == ["auto", "auto"]  # the oldest of three was pruned
    newest = await server.node.store.get_snapshot("auto", listed[0].id)
    assert newest is not None
    assert set(version_json(newest[1])["elements"]) == {f"e{i}" for i in range(15)}
    oldest = await server.node.store.get_snapshot("auto", listed[1].id)
    assert oldest is not None
    assert set(version_json(oldest[1])["elements"]) == {f"e{i}" for i in range(10)}


async def test_automatic_snapshots_on_a_schedule(server_factory, sqlite_url) -> None:
    server = await server_factory(
        database_url=sqlite_url, auto_snapshot_every_updates=0, auto_snapshot_interval_s=0.3
    )
    async with yjs_client(server.ws_url, "sched", mint("alice")) as (doc, _, _):
        elements(doc)["e1"] = Map({"x": 1})
        await eventually(lambda: server.node.auto_snapshots.pending("sched") == 1)
    taken: list[Any] = []

    async def poll() -> None:
        while not taken:
            taken.extend(await server.node.store.list_snapshots("sched", limit=10, offset=0))
            await asyncio.sleep(0.05)

    async with asyncio.timeout(5):
        await poll()
    await asyncio.sleep(0.7)  # no change since: no further snapshot
    assert len(await server.node.store.list_snapshots("sched", limit=10, offset=0)) == 1


class JsonCanvasView:
    """What a JSON-protocol client knows of a canvas: the REST state, then every ``canvas_updated``.

    ``canvas_updated`` reports a removed property as ``null``, so null-valued properties are ignored
    when comparing (no test element holds a null).
    """

    def __init__(self, client: JsonClient, state: dict[str, Any]) -> None:
        self.client = client
        self.items = {"elements": dict(state["elements"]), "layers": dict(state["layers"])}
        self._seen = len(client.received)

    def catch_up(self) -> dict[str, Any]:
        for message in self.client.received[self._seen :]:
            if isinstance(message, dict) and message.get("type") == "canvas_updated":
                self._apply(message["data"])
        self._seen = len(self.client.received)
        return {root: _without_nulls(items) for root, items in self.items.items()}

    def _apply(self, data: dict[str, Any]) -> None:
        root, item_id = ("layers", data["layerId"]) if "layerId" in data else ("elements", data["elementId"])
        if data["action"] in ("delete", "layer_delete"):
            self.items[root].pop(item_id, None)
        elif data["action"] in ("add", "layer_add"):
            self.items[root][item_id] = dict(data["properties"])
        else:
            self.items[root].setdefault(item_id, {}).update(data.get("properties", {}))


def _without_nulls(items: dict[str, Any]) -> dict[str, Any]:
    return {
        item_id: {key: value for key, value in item.items() if value is not None}
        for item_id, item in items.items()
    }


def items_of(canvas: dict[str, Any]) -> dict[str, Any]:
    return {root: _without_nulls(canvas[root]) for root in ("elements", "layers")}


async def test_restore_with_two_yjs_editors_and_a_json_client(
    rest_server: RunningServer, http: httpx.AsyncClient
) -> None:
    url = rest_server.ws_url
    async with (
        yjs_client(url, "mixed", mint("alice")) as (alice, _, _),
        yjs_client(url, "mixed", mint("bob")) as (bob, _, _),
        json_client(url, mint("carol", {"canvas:mixed": "write"})) as carol,
    ):
        draw(alice, e1={"type": "rect", "x": 1, "y": 1}, e2={"type": "text", "text": "hello"})
        alice.get("layers", type=Map)["l1"] = Map({"id": "l1", "name": "Base", "order": 0})
        alice.get("meta", type=Map)["title"] = "Version one"
        await eventually(lambda: canvas_of(bob) == canvas_of(alice))
        await carol.subscribe("canvas:mixed")
        await carol.subscribe("user:carol:notifications")
        ack = await carol.request(
            "canvas_update",
            {
                "canvasId": "mixed",
                "action": "add",
                "elementId": "c1",
                "properties": {"type": "ellipse", "x": 5},
            },
            "ack",
        )
        assert ack["type"] == "ack", ack
        await eventually(lambda: "c1" in elements(alice) and "c1" in elements(bob))
        v1 = await snapshot(http, "mixed", "v1")
        version = (await http.get(f"/api/v1/canvases/mixed/snapshots/{v1['id']}", headers=auth())).json()
        carol_view = JsonCanvasView(carol, (await http.get("/api/v1/canvases/mixed", headers=auth())).json())
        assert carol_view.catch_up() == items_of(version)

        # everyone changes things
        elements(alice)["e1"]["x"] = 300
        alice.get("layers", type=Map)["l1"]["name"] = "Renamed"
        del elements(bob)["e2"]
        draw(bob, e9={"type": "line", "x": 9})
        ack = await carol.request(
            "canvas_update", {"canvasId": "mixed", "action": "delete", "elementId": "c1"}, "ack"
        )
        assert ack["type"] == "ack", ack
        carol_view.items["elements"].pop("c1")  # her own change is not echoed to her
        await eventually(
            lambda: canvas_of(alice) == canvas_of(bob) and carol_view.catch_up() == items_of(canvas_of(alice))
        )
        assert items_of(canvas_of(alice)) != items_of(version)

        await restore(http, "mixed", v1["id"])
        expected = body_of(version)
        await eventually(lambda: canvas_of(alice) == expected and canvas_of(bob) == expected)
        await eventually(lambda: carol_view.catch_up() == items_of(version))
        assert to_json(rest_server.node.rooms.get("mixed").doc) == expected

        # carol edited the canvas: she is told on her own channel, and the canvas channel says so too
        for channel in ("user:carol:notifications", "canvas:mixed"):
            note = await carol.expect("notification", lambda m, channel=channel: m["channel"] == channel)
            assert note["data"]["kind"] == "canvas_restored"
            assert note["data"]["canvasId"] == "mixed" and note["data"]["snapshotId"] == v1["id"]
            assert note["data"]["user"] == {"id": "admin", "name": "Admin"}
            assert note["data"]["title"] and note["data"]["body"]
        # a second restore of the same version changes nothing and tells nobody
        assert (await restore(http, "mixed", v1["id"]))["changed"] is False
        await asyncio.sleep(0.2)
        assert not carol.unconsumed("notification")
        assert not [m for m in carol.unconsumed("canvas_updated") if m["offset"] > note["offset"]]


async def test_delete_notifies_json_subscribers_and_editors(
    rest_server: RunningServer, http: httpx.AsyncClient
) -> None:
    async with json_client(rest_server.ws_url, mint("dave", {"canvas:gone": "write"})) as dave:
        await dave.subscribe("canvas:gone")
        await dave.subscribe("user:dave:notifications")
        add = {"canvasId": "gone", "action": "add", "elementId": "e1", "properties": {"type": "rect"}}
        assert (await dave.request("canvas_update", add, "ack"))["type"] == "ack"
        assert (await http.delete("/api/v1/canvases/gone", headers=auth())).status_code == 204
        for channel in ("canvas:gone", "user:dave:notifications"):
            note = await dave.expect("notification", lambda m, channel=channel: m["channel"] == channel)
            assert note["data"]["kind"] == "canvas_deleted" and note["data"]["canvasId"] == "gone"


async def test_notifications_need_the_api_key_and_reach_the_user(
    rest_server: RunningServer, http: httpx.AsyncClient
) -> None:
    note = {"kind": "mention", "title": "You were mentioned", "body": "in canvas c1", "link": "/c/c1"}
    path = "/api/v1/users/erin/notifications"
    async with json_client(rest_server.ws_url, mint("erin")) as erin:
        await erin.subscribe("user:erin:notifications")
        for headers in ({}, {"X-API-Key": "wrong"}, auth()):  # a JWT is not the API key
            response = await http.post(path, json=note, headers=headers)
            assert response.status_code == 401, headers
            assert response.json()["error"]["code"] == "AUTH_FAILED"
        response = await http.post(path, json={"kind": "x"}, headers={"X-API-Key": API_KEY})
        assert response.status_code == 422 and response.json()["error"]["field"] == "body.title"

        response = await http.post(path, json=note, headers={"X-API-Key": API_KEY})
        assert response.status_code == 202
        sent = response.json()
        assert sent["channel"] == "user:erin:notifications"
        received = await erin.expect("notification")
        assert received["data"] == note
        assert received["channel"] == sent["channel"] and received["offset"] == sent["offset"]


async def test_notifications_are_refused_when_no_api_key_is_configured(server) -> None:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        response = await http.post(
            "/api/v1/users/erin/notifications", json={"kind": "k", "title": "t"}, headers={"X-API-Key": "any"}
        )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "FORBIDDEN"


async def test_server_side_publish_on_a_channel(rest_server: RunningServer, http: httpx.AsyncClient) -> None:
    async with json_client(rest_server.ws_url, mint("fay", {"canvas:pub": "read"})) as fay:
        await fay.subscribe("canvas:pub")
        path = "/api/v1/channels/canvas:pub/publish"
        body = {"type": "announcement", "data": {"text": "maintenance at 18:00", "level": 2}}
        assert (await http.post(path, json=body)).status_code == 401
        assert (await http.post(path, json=body, headers=auth())).status_code == 401  # a JWT is not the key
        response = await http.post(path, json=body, headers={"X-API-Key": API_KEY})
        assert response.status_code == 202, response.text
        sent = response.json()
        received = await fay.expect("announcement")
        assert received["data"] == body["data"] and received["sessionId"] == "server"
        assert received["channel"] == "canvas:pub" == sent["channel"] and received["offset"] == sent["offset"]

        bad = await http.post("/api/v1/channels/nonsense/publish", json=body, headers={"X-API-Key": API_KEY})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "INVALID_MESSAGE"
        big = {"data": {"blob": "x" * 70_000}}
        too_big = await http.post(path, json=big, headers={"X-API-Key": API_KEY})
        assert too_big.status_code == 422 and too_big.json()["error"]["field"] == "body.data"
        nan = await http.post(
            path,
            content=b'{"data": {"x": NaN}}',
            headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
        )
        assert nan.status_code == 422, nan.text
