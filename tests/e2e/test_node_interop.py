"""Interop with the npm y-websocket client: a Node ``WebsocketProvider`` and pycrdt clients on one canvas.

Runs ``tests/node/interop.mjs`` (pinned yjs/y-websocket/ws, installed with ``npm ci``) against a real uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from pycrdt import Map

from crdt import protocol
from crdt.protocol import AwarenessUpdate
from tests.conftest import RunningServer, in_ci, mint
from tests.yclient import WebsocketChannel, elements, eventually, yjs_client

pytestmark = [pytest.mark.e2e, pytest.mark.node]

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
SCRIPT = NODE_DIR / "interop.mjs"
LOCK_STAMP = "node_modules/.maily-lock-sha256"  # written after a successful `npm ci`
NPM_CI_TIMEOUT_S = 300
SCRIPT_DEADLINE_MS = 20_000  # the script exits by itself after this
EVENT_TIMEOUT_S = 15.0
_FRAME_CAP = 1 << 24


def _unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so the Node interop tests must run", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_deps() -> Path:
    """``tests/node`` with ``node_modules`` matching ``package-lock.json`` (``npm ci`` when missing or stale).

    Skips when ``node``/``npm`` are not installed, except under ``CI=true`` where that is a failure.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable(f"node and npm are needed on PATH, found node={node!r} npm={npm!r}")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    if major < 18:
        _unavailable(f"Node >= 18 is needed, found {version.stdout.strip()}")
    lock_hash = hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()
    stamp = NODE_DIR / LOCK_STAMP
    if not stamp.exists() or stamp.read_text().strip() != lock_hash:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT_S,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {NODE_DIR} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        stamp.write_text(lock_hash)
    return NODE_DIR


class NodeClient:
    """One running ``interop.mjs``: its JSON event lines, in order, and its stderr."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.stderr = b""

    async def event(self, name: str, timeout: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
        """Read stdout lines until the event ``name``; fails (with the script's stderr) on EOF or timeout."""
        for seen in self.events:
            if seen["event"] == name:
                return seen
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.process.stdout.readline()
                    if not line:
                        break
                    self.events.append(json.loads(line))
                    if self.events[-1]["event"] == name:
                        return self.events[-1]
        except TimeoutError:
            self.kill()
            await self._fail(f"expected event {name!r} within {timeout} s")
        await self._fail(f"expected event {name!r}, the script closed stdout")

    async def go(self) -> None:
        """Open the gate of a ``"gate": true`` plan: the script connects now."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            await self.process.stdin.drain()

    async def finish(self, timeout: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
        """Wait for the ``done`` event and a zero exit status; returns the ``done`` event."""
        done = await self.event("done", timeout)
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
        if code != 0:
            await self._fail(f"expected exit status 0, got {code}")
        return done

    def kill(self) -> None:
        """SIGKILL this script by its PID, if it is still running."""
        if self.process.returncode is None:
            self.process.kill()

    async def _fail(self, message: str) -> NoReturn:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.process.wait()
                if self.process.stderr is not None:
                    self.stderr += await self.process.stderr.read()
        pytest.fail(
            f"interop.mjs: {message}; exit status {self.process.returncode}; events {self.events}; "
            f"stderr:\n{self.stderr.decode(errors='replace')}"
        )


@contextlib.asynccontextmanager
async def node_client(
    deps: Path, server: RunningServer, canvas_id: str, token: str, plan: dict[str, Any]
) -> AsyncIterator[NodeClient]:
    """Start ``interop.mjs`` for ``canvas_id``; the process is killed (by its PID) if still running at exit.

    The token travels in the environment, not in argv, so it shows in no process listing or debug log.
    """
    node = shutil.which("node")
    assert node is not None  # node_deps checked it
    process = await asyncio.create_subprocess_exec(
        node,
        str(deps / SCRIPT.name),
        server.ws_url,
        canvas_id,
        "-",
        json.dumps({"deadlineMs": SCRIPT_DEADLINE_MS, **plan}),
        cwd=deps,
        env={**os.environ, "MAILY_NODE_TOKEN": token},
        stdin=subprocess.PIPE if plan.get("gate") else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    client = NodeClient(process)
    try:
        yield client
    finally:
        client.kill()
        async with asyncio.timeout(10):
            await process.wait()


def awareness_states(channel: WebsocketChannel) -> dict[int, Any]:
    """Latest awareness state per Yjs client id, decoded from the raw frames the pycrdt client received."""
    states: dict[int, Any] = {}
    for frame in channel.received:
        if frame[:1] != bytes((protocol.MessageType.AWARENESS,)):
            continue
        message = protocol.parse_client_frame(
            frame, max_frame_bytes=_FRAME_CAP, max_sync_frame_bytes=_FRAME_CAP
        )
        assert isinstance(message, AwarenessUpdate)
        for entry in message.entries:
            states[entry.client_id] = json.loads(entry.state_json)
    return states


def element_json(doc_elements: Map, key: str) -> dict[str, Any]:
    return dict(doc_elements[key].to_py())


async def test_node_and_pycrdt_writers_converge_and_see_awareness(node_deps, server) -> None:
    canvas = "node-interop"
    python_element = {"x": 1, "y": 2, "type": "ellipse", "createdBy": "python"}
    node_plan = {
        "name": "node",
        "element": {"key": "from-node", "x": 10, "y": 20, "type": "rect"},
        "cursor": {"x": 5, "y": 7},
        "expect": ["from-python"],
    }
    async with (
        yjs_client(server.ws_url, canvas, mint("py")) as (doc, channel, _),
        node_client(node_deps, server, canvas, mint("nodeuser"), node_plan) as node,
    ):
        synced = await node.event("synced")
        await node.event("written")
        await eventually(lambda: "from-node" in elements(doc))
        assert element_json(elements(doc), "from-node") == {
            "x": 10,
            "y": 20,
            "type": "rect",
            "createdBy": "node",
        }
        node_state = {"user": {"name": "node"}, "cursor": {"x": 5, "y": 7}}
        await eventually(lambda: awareness_states(channel).get(synced["clientId"]) == node_state)
        room = server.node.rooms.get(canvas)
        assert room.awareness.states()[synced["clientId"]] == node_state

        elements(doc)["from-python"] = Map(python_element)
        done = await node.finish()

    assert done["elements"]["from-python"] == python_element
    assert done["elements"]["from-node"] == {"x": 10, "y": 20, "type": "rect", "createdBy": "node"}
    assert done["statuses"] == ["connected"], done
    assert done["closes"] == [], done
    assert done["warnings"] == [], done
    served = room.doc.get("elements", type=Map)
    assert set(served.keys()) == {"from-node", "from-python"}
    assert element_json(served, "from-node")["createdBy"] == "node"
    assert element_json(served, "from-python") == python_element


async def test_read_only_node_client_is_refused_but_stays_connected(node_deps, server) -> None:
    canvas = "node-ro"
    async with yjs_client(server.ws_url, canvas, mint("writer")) as (writer, _, _):
        elements(writer)["before"] = Map({"x": 1, "y": 1, "type": "rect", "createdBy": "python"})
        await eventually(lambda: "before" in server.node.rooms.get(canvas).doc.get("elements", type=Map))
        plan = {
            "mode": "readonly",
            "name": "reader",
            "element": {"key": "evil", "x": 666, "y": 666, "type": "rect"},
            "expect": ["before", "after"],
        }
        reader_token = mint("reader", {f"canvas:{canvas}": "read"})
        async with node_client(node_deps, server, canvas, reader_token, plan) as node:
            synced = await node.event("synced")
            assert "before" in synced["elements"], synced
            denied = await node.event("denied")
            assert "read-only access to this canvas" in denied["warning"]
            assert "<token>" in denied["warning"], "the script must redact the token it prints"
            elements(writer)["after"] = Map({"x": 2, "y": 2, "type": "rect", "createdBy": "python"})
            done = await node.finish()
        await asyncio.sleep(0.2)
        assert "evil" not in elements(writer)

    assert done["elements"]["after"]["x"] == 2
    assert "evil" in done["elements"], "the refused write stays in the reader's local document"
    assert done["statuses"] == ["connected"], done
    assert done["closes"] == [], done
    assert done["warnings"] == [denied["warning"]], "the permission-denied warning, and nothing else"
    assert "evil" not in server.node.rooms.get(canvas).doc.get("elements", type=Map)


async def test_two_node_clients_joining_a_loading_room_sync_quickly(node_deps, server, monkeypatch) -> None:
    canvas = "node-race"
    assert server.node.rooms.get(canvas) is None
    store = server.node.store
    real_load = store.load
    loads: list[tuple[str, float, float]] = []

    async def slow_load(canvas_id: str) -> list[bytes]:
        began = time.time()
        await asyncio.sleep(0.5)  # long enough for every client below to arrive while the room loads
        updates = await real_load(canvas_id)
        loads.append((canvas_id, began, time.time()))
        return updates

    monkeypatch.setattr(store, "load", slow_load)
    plans = [
        {"name": name, "element": {"key": key, "x": i, "y": i, "type": "rect"}, "gate": True}
        for i, (name, key) in enumerate((("node-a", "from-a"), ("node-b", "from-b")))
    ]
    plans[0]["expect"] = ["from-b", "from-python"]
    plans[1]["expect"] = ["from-a", "from-python"]
    async with (
        node_client(node_deps, server, canvas, mint("node-a"), plans[0]) as node_a,
        node_client(node_deps, server, canvas, mint("node-b"), plans[1]) as node_b,
    ):
        await asyncio.gather(node_a.event("ready"), node_b.event("ready"))  # both booted
        await asyncio.gather(node_a.go(), node_b.go())
        released = time.monotonic()
        async with yjs_client(server.ws_url, canvas, mint("py")) as (doc, _, _):
            elements(doc)["from-python"] = Map({"x": 9, "y": 9, "type": "text", "createdBy": "python"})
            done_a, done_b = await asyncio.gather(node_a.finish(), node_b.finish())
            took_s = time.monotonic() - released
            await eventually(lambda: set(elements(doc).keys()) == {"from-a", "from-b", "from-python"})

    assert [canvas_id for canvas_id, _, _ in loads] == [canvas], "concurrent joins must share one load"
    _, load_began, load_ended = loads[0]
    assert took_s < 10, f"the Node clients took {took_s:.1f} s from their start to their exit"
    for done in (done_a, done_b):
        # the server accepts the upgrade before it loads the room, so the first client's socket opens
        # a moment before the load it starts (Date.now() is also cut to milliseconds): allow 1 s
        opened = done["openedAt"] / 1000
        assert load_began - 1.0 <= opened < load_ended, "the client joined after the load finished"
        assert done["statuses"] == ["connected"], done
        assert done["closes"] == [], done
        assert done["warnings"] == [], done
        assert set(done["elements"]) == {"from-a", "from-b", "from-python"}
        assert done["syncedAt"] - done["openedAt"] < 5_000, done
    served = server.node.rooms.get(canvas).doc.get("elements", type=Map)
    assert set(served.keys()) == {"from-a", "from-b", "from-python"}
