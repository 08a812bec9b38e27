"""The y-websocket decoder: well-formed frames round-trip, anything else is a BadMessage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from crdt import protocol
from crdt.errors import BadMessage, FrameTooLarge
from crdt.protocol import AwarenessEntry, AwarenessUpdate, DocUpdate, QueryAwareness, SyncStep1

LIMITS = {"max_frame_bytes": 64 * 1024, "max_sync_frame_bytes": 1024 * 1024}


def _sample_update() -> bytes:
    doc = Doc(client_id=42)
    doc.get("elements", type=Map)["e1"] = Map({"x": 1, "type": "rect"})
    return doc.get_update()


SAMPLE_UPDATE = _sample_update()


def sample_update() -> bytes:
    return SAMPLE_UPDATE


def test_sync_messages_round_trip() -> None:
    update = sample_update()
    assert protocol.parse_client_frame(protocol.encode_update(update), **LIMITS) == DocUpdate(
        update, step2=False
    )
    assert protocol.parse_client_frame(protocol.encode_sync_step2(update), **LIMITS) == DocUpdate(
        update, step2=True
    )
    state_vector = Doc().get_state()
    assert protocol.parse_client_frame(protocol.encode_sync_step1(state_vector), **LIMITS) == SyncStep1(
        state_vector
    )
    assert (
        protocol.parse_client_frame(bytes([protocol.MessageType.QUERY_AWARENESS]), **LIMITS)
        == QueryAwareness()
    )


def test_awareness_round_trip() -> None:
    entries = (AwarenessEntry(7, 3, '{"user":{"name":"A"}}'), AwarenessEntry(9, 1, "null"))
    parsed = protocol.parse_client_frame(protocol.encode_awareness(entries), **LIMITS)
    assert parsed == AwarenessUpdate(entries)
    assert parsed.entries[1].removed


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00",
        b"\x00\x02",
        b"\x00\x02\x05ab",  # length prefix past the end
        b"\x00\x07\x00",  # unknown sync type
        b"\x09",  # unknown message type
        b"\x01\x03\x01\x01\x01",  # awareness: truncated
        protocol.encode_awareness([AwarenessEntry(1, 1, "{not json")]),
        protocol.encode_awareness([AwarenessEntry(1, 1, "[1, 2]")]),
        protocol.encode_update(b"\x01\x02\x03\xff\xff"),
        protocol.encode_update(sample_update()) + b"\x00",  # trailing byte
        b"\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # endless varUint
    ],
)
def test_malformed_frames_are_bad_messages(frame: bytes) -> None:
    with pytest.raises(BadMessage):
        protocol.parse_client_frame(frame, **LIMITS)


def test_size_limits_depend_on_message_type() -> None:
    big = b"x" * (70 * 1024)
    with pytest.raises(FrameTooLarge):
        protocol.parse_client_frame(
            protocol.encode_awareness([AwarenessEntry(1, 1, f'{{"a":"{big.decode()}"}}')]), **LIMITS
        )
    with pytest.raises(FrameTooLarge):
        protocol.parse_client_frame(protocol.encode_update(big), **LIMITS)
    # a SYNC_STEP2 (an offline client's whole state) may be larger than an incremental update
    doc = Doc()
    doc.get("elements", type=Map)["big"] = Map({"text": "y" * (200 * 1024)})
    parsed = protocol.parse_client_frame(protocol.encode_sync_step2(doc.get_update()), **LIMITS)
    assert isinstance(parsed, DocUpdate)
    assert parsed.step2


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_other_errors(frame: bytes) -> None:
    try:
        protocol.parse_client_frame(frame, **LIMITS)
    except BadMessage:
        pass


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_bit_flipped_updates_are_refused_or_decodable(data: st.DataObject) -> None:
    frame = bytearray(protocol.encode_update(sample_update()))
    for _ in range(data.draw(st.integers(1, 4))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(frame)))
    try:
        message = protocol.parse_client_frame(bytes(frame[:cut]), **LIMITS)
    except BadMessage:
        return
    if isinstance(message, DocUpdate):
        Doc().apply_update(message.update)  # what the decoder let through must apply cleanly
