"""A canvas being deleted cannot be reopened by a client that arrives during the delete."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets

from tests.conftest import mint
from tests.jsonclient import json_client

pytestmark = pytest.mark.e2e


def _add(element_id: str) -> dict:
    return {"canvasId": "x", "action": "add", "elementId": element_id, "properties": {"type": "rect"}}


async def test_clients_arriving_during_a_delete_cannot_resurrect_the_canvas(server, monkeypatch) -> None:
    async with json_client(server.ws_url, mint("bob")) as bob:
        assert (await bob.request("canvas_update", _add("old"), "ack"))["type"] == "ack"
    real_delete = server.node.store.delete_document

    async def slow_delete(canvas_id: str) -> bool:
        await asyncio.sleep(0.5)  # a slow database keeps the delete open while clients arrive
        return await real_delete(canvas_id)

    monkeypatch.setattr(server.node.store, "delete_document", slow_delete)
    admin = {"Authorization": f"Bearer {mint('root', {'canvas:*': 'admin'})}"}
    async with httpx.AsyncClient(base_url=server.http_url, headers=admin, timeout=10) as http:
        delete = asyncio.create_task(http.delete("/api/v1/canvases/x"))
        await asyncio.sleep(0.2)
        async with json_client(server.ws_url, mint("bob")) as bob:
            refused = await bob.request("subscribe", {"channel": "canvas:x"}, "subscribed")
            assert refused["type"] == "error"
            assert refused["data"]["code"] == "SUBSCRIPTION_FAILED"
        async with websockets.connect(f"{server.ws_url}/yjs/x?token={mint('yjs')}") as yjs:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    while True:
                        await yjs.recv()
            assert closed.value.rcvd.code == 4404
        assert (await delete).status_code == 204
        assert (await http.get("/api/v1/canvases/x")).status_code == 404
        assert server.node.rooms.get("x") is None
