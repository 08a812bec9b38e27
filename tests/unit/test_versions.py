"""Restore as a minimal CRDT change, and JSON diffs of canvas versions (pure, no network)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, Text

from crdt.canvas import ELEMENTS, LAYERS, META, roots, to_json
from crdt.versions import diff, load_version, restore, same

# -- building documents from random specs ------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
keys = st.sampled_from(["id", "type", "x", "y", "fill", "text", "lockedBy", "z"])
# a property is a JSON value, a nested shared map, or a shared text
property_values = (
    json_values.map(lambda v: ("json", v))
    | st.dictionaries(keys, json_values, max_size=3).map(lambda v: ("map", v))
    | st.text(max_size=5).map(lambda v: ("text", v))
)
items = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]), st.dictionaries(keys, property_values, max_size=4)
)
canvases = st.fixed_dictionaries(
    {ELEMENTS: items, LAYERS: items, META: st.dictionaries(keys, property_values, max_size=3)}
)


def _value(spec: tuple[str, Any]) -> Any:
    kind, value = spec
    if kind == "map":
        return Map(dict(value))
    if kind == "text":
        return Text(value)
    return value


def build(spec: dict[str, Any]) -> Doc:
    doc = Doc()
    elements, layers, meta = roots(doc)
    with doc.transaction():
        for root, name in ((elements, ELEMENTS), (layers, LAYERS)):
            for item_id, properties in spec[name].items():
                root[item_id] = Map({key: _value(value) for key, value in properties.items()})
        for key, value in spec[META].items():
            meta[key] = _value(value)
    return doc


def record_updates(doc: Doc) -> list[bytes]:
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    return updates


def replica(doc: Doc) -> Doc:
    copy = Doc()
    copy.apply_update(doc.get_update())
    return copy


# -- restore ---------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(version_spec=canvases, live_spec=canvases)
def test_restore_makes_live_equal_to_version_and_is_idempotent(version_spec, live_spec) -> None:
    version = build(version_spec)
    live = build(live_spec)
    editor = replica(live)  # a connected client, receiving only the restore update
    updates = record_updates(live)

    with live.transaction():
        restore(live, load_version(version.get_update()))

    assert same(to_json(live), to_json(version))
    assert to_json(live) == to_json(version)
    for update in updates:
        editor.apply_update(update)
    assert same(to_json(editor), to_json(version))

    # the second restore writes nothing and produces no update at all
    before = len(updates)
    with live.transaction():
        writes = restore(live, version)
    assert writes == 0
    assert len(updates) == before


def test_restore_keeps_equal_values_untouched_and_sets_only_changed_properties() -> None:
    version = build({ELEMENTS: {"e1": {"x": ("json", 1), "y": ("json", 2)}}, LAYERS: {}, META: {}})
    live = replica(version)
    roots(live)[0]["e1"]["x"] = 5
    roots(live)[0]["e2"] = Map({"x": 0})
    roots(live)[2]["title"] = "new"
    with live.transaction():
        writes = restore(live, version)
    assert writes == 3  # e1.x set back, e2 deleted, meta.title deleted
    assert to_json(live) == {ELEMENTS: {"e1": {"x": 1, "y": 2}}, LAYERS: {}, META: {}}


def test_restore_racing_with_a_concurrent_edit_converges() -> None:
    version = build({ELEMENTS: {"e1": {"x": ("json", 1), "fill": ("json", "red")}}, LAYERS: {}, META: {}})
    server = replica(version)
    roots(server)[0]["e1"]["x"] = 50
    client = replica(server)
    # concurrently: the client edits another property, the server restores
    roots(client)[0]["e1"]["fill"] = "blue"
    roots(client)[0]["e9"] = Map({"x": 9})
    with server.transaction():
        restore(server, version)
    server_state, client_state = server.get_update(), client.get_update()
    server.apply_update(client_state)
    client.apply_update(server_state)
    assert to_json(server) == to_json(client)
    assert to_json(server)[ELEMENTS]["e1"]["x"] == 1  # the restore's change
    assert to_json(server)[ELEMENTS]["e1"]["fill"] == "blue"  # the concurrent edit survives
    assert "e9" in to_json(server)[ELEMENTS]


def test_restore_copies_shared_types_into_the_live_document() -> None:
    version = Doc()
    elements, _, _ = roots(version)
    elements["e1"] = Map({"label": Text("hello"), "style": Map({"fill": "red", "nested": Map({"a": 1})})})
    live = Doc()
    with live.transaction():
        restore(live, version)
    element = roots(live)[0]["e1"]
    assert isinstance(element["label"], Text) and str(element["label"]) == "hello"
    assert isinstance(element["style"]["nested"], Map)
    assert to_json(live) == to_json(version)


def test_load_version_refuses_garbage() -> None:
    try:
        load_version(b"\xff\x00garbage")
    except ValueError:
        return
    raise AssertionError("expected ValueError")


# -- same and diff ---------------------------------------------------------------------------------


def test_same_is_json_equality() -> None:
    assert same(1, 1.0)
    assert not same(True, 1)
    assert not same(None, 0)
    assert not same({}, [])
    assert same({"a": [1, {"b": 2.0}]}, {"a": [1.0, {"b": 2}]})
    assert not same({"a": 1}, {"a": 1, "b": None})


def test_diff_reports_items_and_properties() -> None:
    before = {
        ELEMENTS: {"e1": {"x": 1, "fill": "red"}, "e2": {"x": 2}},
        LAYERS: {"l1": {"name": "A"}},
        META: {"title": "old", "width": 100},
    }
    after = {
        ELEMENTS: {"e1": {"x": 5, "stroke": "black"}, "e3": {"x": 3}},
        LAYERS: {"l1": {"name": "A"}},
        META: {"title": "new", "width": 100},
    }
    result = diff(before, after)
    assert result.elements.added == {"e3": {"x": 3}}
    assert result.elements.removed == {"e2": {"x": 2}}
    changes = result.elements.changed["e1"]
    assert (changes["x"].kind, changes["x"].before, changes["x"].after) == ("changed", 1, 5)
    assert (changes["fill"].kind, changes["fill"].before) == ("removed", "red")
    assert (changes["stroke"].kind, changes["stroke"].after) == ("added", "black")
    assert not result.layers.changed
    assert list(result.meta) == ["title"]
    assert not result.empty
    assert diff(after, after).empty


@settings(max_examples=100, deadline=None)
@given(a=canvases, b=canvases)
def test_diff_is_empty_exactly_when_versions_are_equal(a, b) -> None:
    json_a, json_b = to_json(build(a)), to_json(build(b))
    assert diff(json_a, json_a).empty
    assert diff(json_a, json_b).empty == same(json_a, json_b)
