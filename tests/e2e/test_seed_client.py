"""The seed's own TypeScript client (``MailyWebSocket`` + ``CollaborativeCanvas``) against a real server.

``tests/seedclient/seed.ts`` holds the seed's classes verbatim except for the URL; ``glue.ts`` adds
only what the seed leaves undefined. ``run.mjs`` compiles both with esbuild and drives two clients
(Node + ``ws``, pinned in ``package-lock.json``); a pycrdt editor checks the result in the document.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest
from pycrdt import Map

from tests.conftest import in_ci, mint
from tests.yclient import elements, yjs_client

pytestmark = [pytest.mark.e2e, pytest.mark.node]

CLIENT_DIR = Path(__file__).resolve().parent.parent / "seedclient"
LOCK_STAMP = "node_modules/.maily-lock-sha256"


def _unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so the seed client test must run", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def seed_client_dir() -> Path:
    """``tests/seedclient`` with ``node_modules`` matching its lock (``npm ci`` when missing or stale)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable(f"node and npm are needed on PATH, found node={node!r} npm={npm!r}")
    lock_hash = hashlib.sha256((CLIENT_DIR / "package-lock.json").read_bytes()).hexdigest()
    stamp = CLIENT_DIR / LOCK_STAMP
    if not stamp.exists() or stamp.read_text().strip() != lock_hash:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=CLIENT_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {CLIENT_DIR} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        stamp.write_text(lock_hash)
    return CLIENT_DIR


def test_seed_files_are_the_seed_verbatim_but_for_the_url() -> None:
    seed_doc = Path("/work/shared/seed/000_06c43e5b4858ffaf.txt")
    candidates = [seed_doc, *Path(__file__).resolve().parents[3].glob("shared/seed/000_06c43e5b4858ffaf.txt")]
    source = next((path for path in candidates if path.exists()), None)
    if source is None:
        pytest.skip("shared/seed is not next to the repository")
    text = source.read_text()
    blocks = [part.split("```", 1)[0] for part in text.split("```typescript\n")[1:]]
    expected = "\n".join(blocks).replace(
        "const url = `wss://api.maily.com/ws?token=${this.authToken}`;",
        "const url = `${SERVER_URL}/ws?token=${this.authToken}`;",
    )
    ours = (CLIENT_DIR / "seed.ts").read_text()
    body = ours[ours.index("// WebSocket client implementation") :]
    assert body == expected


async def test_seed_client_collaborates(server, seed_client_dir: Path) -> None:
    canvas_id = "seed1"
    tokens = [mint("alice", {f"canvas:{canvas_id}": "write"}), mint("bob", {"canvas:*": "write"})]
    process = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node",
        "run.mjs",
        server.ws_url,
        *tokens,
        canvas_id,
        cwd=seed_client_dir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert stdout, f"no output from run.mjs; stderr:\n{stderr.decode(errors='replace')}"
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    assert result["ok"], (
        f"{result['error']} after {result['steps']}\nstderr:\n{stderr.decode(errors='replace')}"
    )
    assert process.returncode == 0

    alice, bob = result["alice"], result["bob"]
    ack = next(
        e["message"] for e in alice if e["kind"] == "message" and e["message"]["type"] == "connection_ack"
    )
    assert ack["sessionId"] == ack["data"]["sessionId"] and ack["data"]["userId"] == "alice"
    activity = [e for e in bob if e["kind"] == "showUserActivity"]
    assert {"user": {"id": "alice", "name": "Alice"}, "action": "add"} in [
        {"user": e["user"], "action": e["action"]} for e in activity
    ]
    # nobody's own changes come back to them (the seed client would skip them anyway)
    assert not [e for e in alice if e["kind"] == "addElement"]

    # CRDT-first: the changes are in the Yjs document, as a pycrdt editor sees it
    async with yjs_client(server.ws_url, canvas_id, mint("carol")) as (doc, _, _):
        assert "e1" not in elements(doc)  # deleted at the end
    room = server.node.rooms.get(canvas_id)
    assert room is None or "e1" not in room.doc.get("elements", type=Map)
