"""crdt.canvas.apply_edit: the canvas_update actions as pure changes to a pycrdt document."""

from __future__ import annotations

import pytest
from pycrdt import Doc

from crdt.canvas import Actor, Edit, ItemChange, apply_edit, to_json, wire_action
from crdt.errors import EditRefused, ElementLocked

ALICE = Actor("alice", "Alice")
BOB = Actor("bob", "Bob")
ADMIN = Actor("root", "Root", overrides_locks=True)


def edit(doc: Doc, actor: Actor, **fields: object) -> None:
    with doc.transaction():
        apply_edit(doc, Edit(**fields), actor, now_ms=1_000, lock_ttl_ms=500)  # type: ignore[arg-type]


def test_element_lifecycle_and_locks() -> None:
    doc = Doc()
    edit(doc, ALICE, action="add", element_id="e1", properties={"type": "rect", "x": 1, "extra": {"k": [1]}})
    element = to_json(doc)["elements"]["e1"]
    assert element["createdBy"] == "alice" and element["extra"] == {"k": [1]} and element["lockedBy"] is None
    edit(doc, BOB, action="update", element_id="e1", properties={"fill": "#fff", "extra": None})
    edit(doc, BOB, action="move", element_id="e1", position={"x": 5, "y": 6})
    element = to_json(doc)["elements"]["e1"]
    assert element["fill"] == "#fff" and "extra" not in element and (element["x"], element["y"]) == (5, 6)
    edit(doc, ALICE, action="lock", element_id="e1")
    assert to_json(doc)["elements"]["e1"]["lockedBy"] == {"id": "alice", "name": "Alice", "until": 1500}
    for action in ("update", "move", "delete", "unlock", "lock"):
        with pytest.raises(ElementLocked):
            edit(doc, BOB, action=action, element_id="e1", properties={"x": 1}, position={"x": 1, "y": 1})
    edit(doc, ADMIN, action="update", element_id="e1", properties={"x": 9})
    with doc.transaction():  # expired locks do not hold
        apply_edit(doc, Edit("update", "e1", properties={"x": 10}), BOB, now_ms=2_000, lock_ttl_ms=500)
    edit(doc, ALICE, action="unlock", element_id="e1")
    edit(doc, BOB, action="delete", element_id="e1")
    assert to_json(doc)["elements"] == {}


def test_layers_and_locked_layers() -> None:
    doc = Doc()
    edit(doc, ALICE, action="layer_add", layer_id="l1", properties={"name": "Top"})
    assert to_json(doc)["layers"]["l1"] == {
        "id": "l1",
        "name": "Top",
        "visible": True,
        "locked": False,
        "order": 0,
    }
    edit(doc, ALICE, action="add", element_id="e1", properties={"type": "text", "layerId": "l1"})
    edit(doc, ALICE, action="layer_update", layer_id="l1", properties={"locked": True})
    with pytest.raises(ElementLocked):
        edit(doc, ALICE, action="update", element_id="e1", properties={"text": "x"})
    with pytest.raises(ElementLocked):
        edit(doc, ALICE, action="add", element_id="e2", properties={"type": "text", "layerId": "l1"})
    edit(doc, ALICE, action="layer_delete", layer_id="l1")
    assert to_json(doc)["layers"] == {}


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "add", "element_id": "e1", "properties": {"type": "rect"}},  # exists
        {"action": "add", "element_id": "e2", "properties": {"x": 1}},
        {"action": "add", "element_id": "e2", "properties": {"type": "blob"}},
        {"action": "add", "element_id": "e2", "properties": {"type": "rect", "id": "other"}},
        {"action": "add", "element_id": "e2", "properties": {"type": "rect", "width": "wide"}},
        {"action": "update", "element_id": "nope", "properties": {"x": 1}},
        {"action": "update", "element_id": "e1", "properties": {}},
        {"action": "update", "element_id": "e1", "properties": {"createdBy": "me"}},
        {"action": "update", "element_id": "e1", "properties": {"type": None}},
        {"action": "move", "element_id": "e1", "position": {"x": True, "y": 1}},
        {"action": "delete"},
        {"action": "layer_update", "layer_id": "nope", "properties": {"name": "x"}},
        {"action": "layer_add", "layer_id": "l1", "properties": {"visible": "yes"}},
        {"action": "spin", "element_id": "e1"},
    ],
)
def test_refused_edits_change_nothing(fields: dict) -> None:
    doc = Doc()
    edit(doc, ALICE, action="add", element_id="e1", properties={"type": "rect"})
    before = doc.get_update()
    with pytest.raises(EditRefused):
        edit(doc, ALICE, **fields)
    assert doc.get_update() == before


def test_wire_action() -> None:
    assert wire_action(ItemChange("elements", "e", "update", {"x": 1, "updatedAt": 5})) == "move"
    assert wire_action(ItemChange("elements", "e", "update", {"lockedBy": {"id": "a"}})) == "lock"
    assert wire_action(ItemChange("elements", "e", "update", {"lockedBy": None})) == "unlock"
    assert wire_action(ItemChange("elements", "e", "update", {"x": 1, "fill": "#f"})) == "update"
    assert wire_action(ItemChange("layers", "l", "add")) == "layer_add"
    assert wire_action(ItemChange("layers", "l", "update")) == "layer_update"
