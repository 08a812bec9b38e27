"""The canvas document schema (DESIGN.md) on top of a pycrdt ``Doc``, and its JSON views.

elements : Map<elementId, Map>   layers : Map<layerId, Map>   meta : Map
Unknown fields are kept: the JSON view is whatever the maps hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from pycrdt import Doc, Map, MapEvent

from .errors import EditRefused, ElementLocked

ELEMENTS = "elements"
LAYERS = "layers"
META = "meta"


def roots(doc: Doc) -> tuple[Map, Map, Map]:
    """The three root maps of a canvas document (created on first access)."""
    return doc.get(ELEMENTS, type=Map), doc.get(LAYERS, type=Map), doc.get(META, type=Map)


def to_json(doc: Doc) -> dict[str, Any]:
    """The whole canvas as plain JSON: ``{"elements": {...}, "layers": {...}, "meta": {...}}``."""
    elements, layers, meta = roots(doc)
    return {ELEMENTS: _plain(elements.to_py()), LAYERS: _plain(layers.to_py()), META: _plain(meta.to_py())}


def _plain(value: Any) -> Any:
    """Yjs numbers come back as floats; give integral ones back as ints, as JSON clients sent them."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


Action = Literal["add", "update", "delete"]


@dataclass(slots=True)
class ItemChange:
    """What one transaction did to one element (or layer).

    Attributes:
        root: ``"elements"`` or ``"layers"``.
        item_id: the element or layer id.
        action: ``add`` (``properties`` holds the whole item), ``update`` (``properties`` holds the
            changed fields with their new values, ``removed`` the deleted fields) or ``delete``.
        position: for an element whose ``x`` or ``y`` changed, both values after the change.
    """

    root: str
    item_id: str
    action: Action
    properties: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    position: dict[str, Any] | None = None


class ChangeCollector:
    """Collects deep events of ``elements`` and ``layers`` during a transaction, per item.

    Subscribe with ``observe(doc)``; call ``drain()`` from the document's transaction observer,
    which pycrdt calls after the deep observers of the same transaction.
    """

    def __init__(self) -> None:
        self._changes: dict[tuple[str, str], ItemChange] = {}
        self._subscriptions: list[tuple[Map, Any]] = []
        self._roots: dict[str, Map] = {}

    def observe(self, doc: Doc) -> None:
        elements, layers, _ = roots(doc)
        self._roots = {ELEMENTS: elements, LAYERS: layers}
        for name, root in self._roots.items():
            sub = root.observe_deep(partial(self._collect, name))
            self._subscriptions.append((root, sub))

    def unobserve(self) -> None:
        for root, sub in self._subscriptions:
            root.unobserve(sub)
        self._subscriptions.clear()

    def drain(self) -> list[ItemChange]:
        changes = list(self._changes.values())
        self._changes.clear()
        return changes

    def _collect(self, root: str, events: list[Any]) -> None:
        for event in events:
            path = [str(part) for part in event.path]
            if not path:
                for item_id, change in event.keys.items():
                    self._on_item(root, str(item_id), change)
                continue
            item = self._item(root, path[0])
            if item.action == "add":
                continue  # the whole item is reported as added
            if len(path) > 1 or not isinstance(event, MapEvent):
                # a nested type inside the item changed: report that field's value as a whole
                field_name = path[1] if len(path) > 1 else path[0]
                item.properties[field_name] = _plain(to_py(_field(self._roots[root], path[0], field_name)))
                continue
            for key, change in event.keys.items():
                if change["action"] == "delete":
                    item.removed.append(str(key))
                else:
                    item.properties[str(key)] = _plain(to_py(change.get("newValue")))
            if root == ELEMENTS and ("x" in event.keys or "y" in event.keys):
                element = self._roots[root].get(path[0])
                if isinstance(element, Map):
                    item.position = {"x": _plain(element.get("x")), "y": _plain(element.get("y"))}

    def _on_item(self, root: str, item_id: str, change: dict[str, Any]) -> None:
        if change["action"] == "delete":
            self._changes[(root, item_id)] = ItemChange(root, item_id, "delete")
            return
        value = _plain(to_py(change.get("newValue")))
        properties = value if isinstance(value, dict) else {"value": value}
        self._changes[(root, item_id)] = ItemChange(root, item_id, "add", properties)

    def _item(self, root: str, item_id: str) -> ItemChange:
        item = self._changes.get((root, item_id))
        if item is None:
            item = self._changes[(root, item_id)] = ItemChange(root, item_id, "update")
        return item


def to_py(value: Any) -> Any:
    """A shared type's plain Python value; other values as they are."""
    return value.to_py() if hasattr(value, "to_py") else value


def _field(root: Map, item_id: str, field_name: str) -> Any:
    item = root.get(item_id)
    return item.get(field_name) if isinstance(item, Map) else None


# -- edits: the JSON protocol's canvas_update actions as changes to the document ------------------

ELEMENT_TYPES = frozenset({"rect", "ellipse", "text", "line", "image", "frame"})
LOCKED_BY = "lockedBy"
_NUMBER_FIELDS = frozenset({"x", "y", "width", "height", "rotation", "fontSize", "z"})
_STRING_FIELDS = frozenset({"type", "fill", "stroke", "text", "layerId"})
_SERVER_FIELDS = frozenset({LOCKED_BY, "createdBy", "updatedAt"})
_LAYER_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "visible": (bool,),
    "locked": (bool,),
    "order": (int, float),
}
ELEMENT_ACTIONS = frozenset({"add", "update", "move", "delete", "lock", "unlock"})
LAYER_ACTIONS = frozenset({"layer_add", "layer_update", "layer_delete"})


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes an edit. ``overrides_locks``: may edit and unlock what others locked (admins)."""

    id: str
    name: str
    overrides_locks: bool = False


@dataclass(frozen=True, slots=True)
class Edit:
    """One ``canvas_update``: ``action`` on element ``element_id`` or layer ``layer_id``.

    ``properties`` is the whole element for ``add`` and a merge patch for ``update``/``layer_update``
    (a ``None`` value removes the field); ``position`` is ``{"x", "y"}`` for ``move``.
    """

    action: str
    element_id: str | None = None
    layer_id: str | None = None
    properties: dict[str, Any] | None = None
    position: dict[str, Any] | None = None


def apply_edit(doc: Doc, edit: Edit, actor: Actor, *, now_ms: int, lock_ttl_ms: int) -> None:
    """Apply ``edit`` to ``doc``'s schema; call inside one transaction (``Room.transact``).

    Checks everything before writing anything, so a refused edit leaves the document untouched.

    Raises:
        EditRefused: a missing or malformed field, an unknown item, an ``add`` of an existing item.
        ElementLocked: the element is locked by someone else (or sits on a locked layer).
    """
    elements, layers, _ = roots(doc)
    if edit.action in LAYER_ACTIONS:
        _apply_layer_edit(layers, edit, now_ms)
        return
    if edit.action not in ELEMENT_ACTIONS:
        raise EditRefused(f"unknown action {edit.action!r}")
    element_id = edit.element_id
    if not element_id:
        raise EditRefused(f"action {edit.action} needs an elementId")
    if edit.action == "add":
        _add_element(elements, layers, element_id, edit.properties, actor, now_ms)
        return
    element = elements.get(element_id)
    if not isinstance(element, Map):
        raise EditRefused(f"no element {element_id!r} on this canvas")
    if edit.action != "lock":
        _check_unlocked(element, layers, actor, now_ms)
    if edit.action == "update":
        patch = _checked_element_fields(edit.properties, required=False)
        if not patch:
            raise EditRefused("update needs a non-empty properties object")
        for key, value in patch.items():
            if value is None:
                element.pop(key, None)
            else:
                element[key] = value
        element["updatedAt"] = now_ms
    elif edit.action == "move":
        position = _checked_position(edit.position)
        element["x"], element["y"] = position["x"], position["y"]
        element["updatedAt"] = now_ms
    elif edit.action == "delete":
        del elements[element_id]
    elif edit.action == "lock":
        _check_unlocked(element, layers, actor, now_ms)
        element[LOCKED_BY] = {"id": actor.id, "name": actor.name, "until": now_ms + lock_ttl_ms}
    else:  # unlock
        element[LOCKED_BY] = None


def lock_holder(element: Map | dict[str, Any], now_ms: int) -> dict[str, Any] | None:
    """The unexpired ``lockedBy`` value of ``element``, if any."""
    holder = element.get(LOCKED_BY)
    if not isinstance(holder, dict):
        return None
    until = holder.get("until")
    if isinstance(until, int | float) and not isinstance(until, bool) and until <= now_ms:
        return None
    return holder


def _check_unlocked(element: Map, layers: Map, actor: Actor, now_ms: int) -> None:
    if actor.overrides_locks:
        return
    holder = lock_holder(element, now_ms)
    if holder is not None and holder.get("id") != actor.id:
        raise ElementLocked(f"element is locked by {holder.get('name') or holder.get('id')}")
    layer_id = element.get("layerId")
    layer = layers.get(layer_id) if isinstance(layer_id, str) else None
    if isinstance(layer, Map) and layer.get("locked") is True:
        raise ElementLocked(f"layer {layer_id} is locked")


def _add_element(
    elements: Map,
    layers: Map,
    element_id: str,
    properties: dict[str, Any] | None,
    actor: Actor,
    now_ms: int,
) -> None:
    fields = _checked_element_fields(properties, required=True)
    if fields.get("id", element_id) != element_id:
        raise EditRefused("properties.id differs from elementId")
    if element_id in elements:
        raise EditRefused(f"element {element_id!r} already exists; use update")
    if "type" not in fields:
        raise EditRefused("add needs properties.type")
    if fields["type"] not in ELEMENT_TYPES:
        raise EditRefused(f"properties.type must be one of {sorted(ELEMENT_TYPES)}")
    layer_id = fields.get("layerId")
    layer = layers.get(layer_id) if isinstance(layer_id, str) else None
    if isinstance(layer, Map) and layer.get("locked") is True and not actor.overrides_locks:
        raise ElementLocked(f"layer {layer_id} is locked")
    values = {key: value for key, value in fields.items() if value is not None}
    values.update({"id": element_id, "createdBy": actor.id, "updatedAt": now_ms, LOCKED_BY: None})
    elements[element_id] = Map(values)


def _checked_element_fields(properties: dict[str, Any] | None, *, required: bool) -> dict[str, Any]:
    if properties is None:
        if required:
            raise EditRefused("properties is required")
        return {}
    for key, value in properties.items():
        if key in _SERVER_FIELDS:
            raise EditRefused(f"properties.{key} is set by the server (use lock/unlock for locks)")
        if value is None:
            if key in ("id", "type"):
                raise EditRefused(f"properties.{key} cannot be removed")
            continue
        if key in _NUMBER_FIELDS and not is_number(value):
            raise EditRefused(f"properties.{key} must be a number")
        if key in _STRING_FIELDS | {"id"} and not isinstance(value, str):
            raise EditRefused(f"properties.{key} must be a string")
    if not required and "id" in properties:
        raise EditRefused("properties.id cannot change")
    return properties


def _checked_position(position: dict[str, Any] | None) -> dict[str, Any]:
    if position is None or not is_number(position.get("x")) or not is_number(position.get("y")):
        raise EditRefused("move needs position {x, y} with numbers")
    return position


def is_number(value: Any) -> bool:
    """A JSON number (bools are ints in Python, not numbers in JSON)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _apply_layer_edit(layers: Map, edit: Edit, now_ms: int) -> None:
    layer_id = edit.layer_id
    if not layer_id:
        raise EditRefused(f"action {edit.action} needs a layerId")
    fields = edit.properties or {}
    for key, value in fields.items():
        expected = _LAYER_FIELDS.get(key)
        if key == "id" and value != layer_id:
            raise EditRefused("properties.id differs from layerId")
        if expected is not None and value is not None and not isinstance(value, expected):
            raise EditRefused(f"properties.{key} has the wrong type")
        if key in ("order",) and isinstance(value, bool):
            raise EditRefused("properties.order must be a number")
    layer = layers.get(layer_id)
    if edit.action == "layer_add":
        if layer_id in layers:
            raise EditRefused(f"layer {layer_id!r} already exists; use layer_update")
        values = {"visible": True, "locked": False, "order": len(layers), "name": layer_id}
        values.update({key: value for key, value in fields.items() if value is not None})
        values["id"] = layer_id
        layers[layer_id] = Map(values)
        return
    if not isinstance(layer, Map):
        raise EditRefused(f"no layer {layer_id!r} on this canvas")
    if edit.action == "layer_delete":
        del layers[layer_id]
        return
    if not fields:
        raise EditRefused("layer_update needs a non-empty properties object")
    for key, value in fields.items():
        if key == "id":
            continue
        if value is None:
            layer.pop(key, None)
        else:
            layer[key] = value


def wire_action(change: ItemChange) -> str:
    """The ``canvas_updated`` action that describes ``change`` (however it was made).

    Elements: ``add``, ``delete``, ``lock``/``unlock`` (only ``lockedBy`` changed), ``move`` (only
    ``x``/``y`` changed) or ``update``; layers: ``layer_add``, ``layer_update``, ``layer_delete``.
    """
    if change.root == LAYERS:
        return {"add": "layer_add", "delete": "layer_delete"}.get(change.action, "layer_update")
    if change.action != "update":
        return change.action
    keys = (set(change.properties) | set(change.removed)) - {"updatedAt"}
    if keys == {LOCKED_BY}:
        return "lock" if change.properties.get(LOCKED_BY) is not None else "unlock"
    if keys and keys <= {"x", "y"} and not change.removed:
        return "move"
    return "update"
