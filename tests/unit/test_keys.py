"""Internal broker channel names: built and parsed as a pair, never valid JSON channels."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.channels import parse_channel
from app.errors import InvalidRequest
from crdt.broker import is_ephemeral
from crdt.keys import awareness_channel, doc_channel, parse_awareness_channel, parse_doc_channel

canvas_ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")


@given(canvas_ids)
def test_doc_channel_round_trips_and_is_not_a_json_channel(canvas_id: str) -> None:
    name = doc_channel(canvas_id)
    assert parse_doc_channel(name) == canvas_id
    assert not is_ephemeral(name)  # keeps history, even for a canvas called "cursor"
    with pytest.raises(InvalidRequest):
        parse_channel(name)


@pytest.mark.parametrize("name", ["canvas:c1", "yjs:c1", "yjs:c1:cursor", "yjs::updates", "yjs:a b:updates"])
def test_other_names_are_not_doc_channels(name: str) -> None:
    assert parse_doc_channel(name) is None


def test_invalid_canvas_id_is_refused() -> None:
    with pytest.raises(ValueError):
        doc_channel("a:b")


@given(canvas_ids)
def test_awareness_channel_round_trips_is_ephemeral_and_not_a_json_channel(canvas_id: str) -> None:
    name = awareness_channel(canvas_id)
    assert parse_awareness_channel(name) == canvas_id
    assert parse_doc_channel(name) is None
    assert is_ephemeral(name)  # cursors: no history
    with pytest.raises(InvalidRequest):
        parse_channel(name)
