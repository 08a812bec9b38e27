"""The JSON protocol decoders never raise anything but BadMessage, whatever the frame (hypothesis fuzz)."""

from __future__ import annotations

import json

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.codec import BadMessage, ClientMessage, Delivery, Format, decode_binary, decode_text

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
envelopes = st.fixed_dictionaries(
    {"type": st.sampled_from(["heartbeat", "subscribe", "bogus", 1]), "data": json_values},
    optional={"id": json_values, "traceId": json_values, "sessionId": json_values},
)


def _decodes_or_refuses(decode, frame) -> None:  # type: ignore[no-untyped-def]
    try:
        message = decode(frame, max_depth=32)
    except BadMessage:
        return
    assert isinstance(message, ClientMessage) and isinstance(message.data, dict)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200) | envelopes.map(lambda v: json.dumps(v, allow_nan=True)))
def test_text_frames(frame: str) -> None:
    _decodes_or_refuses(decode_text, frame)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200) | envelopes.map(lambda v: msgpack.packb(v)))
def test_binary_frames(frame: bytes) -> None:
    _decodes_or_refuses(decode_binary, frame)


def test_deep_and_huge() -> None:
    for text in ("[" * 10_000 + "]" * 10_000, '{"type":"heartbeat","data":{"n":1' + "0" * 5000 + "}}"):
        try:
            decode_text(text, max_depth=32)
        except BadMessage:
            continue
        raise AssertionError("accepted")


def test_delivery_encodes_each_format_once() -> None:
    payload = json.dumps(
        {
            "type": "cursor_moved",
            "sessionId": "s",
            "data": {
                "canvasId": "c",
                "position": {"x": 1, "y": 2},
                "user": {"id": "u", "name": "U"},
                "state": "idle",
            },
        }
    ).encode()
    delivery = Delivery("canvas:c:cursor", 7, payload, "s")
    frame = delivery.frame(Format.JSON)
    assert frame is delivery.frame(Format.JSON)
    assert (
        json.loads(frame.payload)["offset"] == 7 and json.loads(frame.payload)["channel"] == "canvas:c:cursor"
    )
    packed = delivery.frame(Format.MSGPACK)
    assert msgpack.unpackb(packed.payload)["offset"] == 7 and packed is delivery.frame(Format.MSGPACK)
    compact = delivery.frame(Format.MSGPACK, compact_cursors=True)
    assert compact.payload[0] == 0x11 and compact.payload[1] == 1
