"""Hypothesis fuzz of malformed frames against a live server: one connection survives them all."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.codec import CLIENT_TYPES
from tests.conftest import mint
from tests.jsonclient import json_client

pytestmark = pytest.mark.e2e

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=10)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=15,
)
types = st.sampled_from([*sorted(CLIENT_TYPES), "nope"])
envelopes = st.fixed_dictionaries(
    {
        "type": types,
        "data": values
        | st.dictionaries(
            st.sampled_from(
                [
                    "channel",
                    "canvasId",
                    "action",
                    "elementId",
                    "properties",
                    "position",
                    "positions",
                    "prompt",
                    "token",
                    "options",
                    "resume",
                ]
            ),
            values,
            max_size=5,
        ),
    },
    optional={"id": values},
)
frames = (
    st.text(max_size=100)
    | st.binary(max_size=100)
    | envelopes.map(lambda v: json.dumps(v))
    | envelopes.map(lambda v: msgpack.packb(v))
)


@pytest.fixture
async def fuzz_server(server_factory, sqlite_url):  # type: ignore[no-untyped-def]
    """A node whose rate limit does not get in the way of sending hundreds of frames quickly."""
    return await server_factory(database_url=sqlite_url, rate_limit_per_s=100_000, rate_limit_burst=100_000)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(frames, min_size=1, max_size=4))
async def test_malformed_frames_never_break_the_connection(fuzz_server, batch) -> None:
    async with json_client(fuzz_server.ws_url, mint("fuzz", {"canvas:*": "write"})) as client:
        for frame in batch:
            await client.send_raw(frame)
        reply = await client.request("heartbeat", {}, "heartbeat_ack")
        assert reply["type"] == "heartbeat_ack"
        assert all(m["data"]["code"] != "INTERNAL_ERROR" for m in client.unconsumed("error"))
