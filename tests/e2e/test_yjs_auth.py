"""The auth matrix of the Yjs endpoint: refused before any document byte, with the right status or code."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import jwt
import pytest
import websockets
from pycrdt import Map

from tests.conftest import ISSUED_TOKENS, JWT_SECRET, mint
from tests.yclient import elements, eventually, yjs_client

pytestmark = pytest.mark.e2e


def _remember(token: str) -> str:
    ISSUED_TOKENS.add(token)
    return token


def _signed(claims: dict, *, key: str = JWT_SECRET, algorithm: str = "HS256") -> str:
    return _remember(jwt.encode(claims, key, algorithm=algorithm))


def _alg_none(claims: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return _remember(f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.")


def _claims(**overrides) -> dict:
    now = int(time.time())
    claims = {"sub": "mallory", "iat": now, "exp": now + 600, "perms": {"canvas:*": "write"}}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


CASES = {
    "missing": (None, 401),
    "malformed": ("not-a-jwt", 401),
    "bad_signature": (lambda: _signed(_claims(), key="another-secret-another-secret-xx"), 401),
    "alg_none": (lambda: _alg_none(_claims()), 401),
    "expired": (lambda: _signed(_claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)), 401),
    "no_exp": (lambda: _signed(_claims(exp=None)), 401),
    "no_sub": (lambda: _signed(_claims(sub=None)), 401),
    "no_iat": (lambda: _signed(_claims(iat=None)), 401),
    "wrong_canvas": (lambda: mint("eve", {"canvas:other": "write"}), 403),
    "no_perms": (lambda: mint("eve", {"ai_mesh:1": "read"}), 403),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_refused_before_upgrade(server, case: str) -> None:
    token, status = CASES[case]
    token = token() if callable(token) else token
    url = f"{server.ws_url}/yjs/secret" + (f"?token={token}" if token else "")
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with asyncio.timeout(5):
            await websockets.connect(url)
    assert refused.value.response.status_code == status
    assert server.node.rooms.get("secret") is None  # nothing was loaded, let alone sent


async def test_bad_canvas_id_is_refused(server) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{server.ws_url}/yjs/{'x' * 65}?token={mint()}")
    assert refused.value.response.status_code == 422


async def test_header_and_subprotocol_carriers(server) -> None:
    token = mint("carrier")
    async with websockets.connect(
        f"{server.ws_url}/yjs/hdr", additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        assert (await ws.recv())[:2] == b"\x00\x00"  # sync step 1
    async with websockets.connect(
        f"{server.ws_url}/yjs/hdr", subprotocols=["y-websocket", f"bearer.{token}"]
    ) as ws:
        assert ws.subprotocol == "y-websocket"
        assert (await ws.recv())[:2] == b"\x00\x00"


async def test_token_expiring_while_connected_closes_4001(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, jwt_leeway_s=0)
    token = mint("short", ttl=2)
    async with websockets.connect(f"{server.ws_url}/yjs/exp?token={token}") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
    assert closed.value.rcvd.code == 4001


async def test_allowed_origins(server_factory, sqlite_url) -> None:
    server = await server_factory(database_url=sqlite_url, allowed_origins=["https://app.example"])
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{server.ws_url}/yjs/o?token={mint()}", origin="https://evil.example")
    assert refused.value.response.status_code == 403
    async with websockets.connect(
        f"{server.ws_url}/yjs/o?token={mint()}", origin="https://app.example"
    ) as ws:
        await ws.recv()


async def test_read_role_cannot_write_but_write_role_can(server) -> None:
    async with yjs_client(server.ws_url, "roles", mint("w", {"canvas:roles": "write"})) as (w, _, _):
        async with yjs_client(server.ws_url, "roles", mint("r", {"canvas:*": "read"})) as (r, _, _):
            elements(w)["ok"] = Map({"x": 1})
            await eventually(lambda: "ok" in elements(r))


async def test_token_within_leeway_keeps_the_connection_until_leeway_ends(server_factory, sqlite_url) -> None:
    """A token accepted thanks to the leeway is not closed with 4001 the moment it is accepted."""
    server = await server_factory(database_url=sqlite_url, jwt_leeway_s=3)
    now = int(time.time())
    token = _signed(_claims(iat=now - 60, exp=now - 1))  # expired 1 s ago, within the 3 s leeway
    async with websockets.connect(f"{server.ws_url}/yjs/lee?token={token}") as ws:
        await ws.recv()  # sync step 1
        await asyncio.sleep(1.0)
        assert ws.state is websockets.State.OPEN
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
    assert closed.value.rcvd.code == 4001
