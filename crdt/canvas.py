"""The canvas document schema (DESIGN.md) on top of a pycrdt ``Doc``, and its JSON views.

elements : Map<elementId, Map>   layers : Map<layerId, Map>   meta : Map
Unknown fields are kept: the JSON view is whatever the maps hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from pycrdt import Doc, Map, MapEvent

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
    """

    root: str
    item_id: str
    action: Action
    properties: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)


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
                item.properties[field_name] = _plain(_to_py(_field(self._roots[root], path[0], field_name)))
                continue
            for key, change in event.keys.items():
                if change["action"] == "delete":
                    item.removed.append(str(key))
                else:
                    item.properties[str(key)] = _plain(_to_py(change.get("newValue")))

    def _on_item(self, root: str, item_id: str, change: dict[str, Any]) -> None:
        if change["action"] == "delete":
            self._changes[(root, item_id)] = ItemChange(root, item_id, "delete")
            return
        value = _plain(_to_py(change.get("newValue")))
        properties = value if isinstance(value, dict) else {"value": value}
        self._changes[(root, item_id)] = ItemChange(root, item_id, "add", properties)

    def _item(self, root: str, item_id: str) -> ItemChange:
        item = self._changes.get((root, item_id))
        if item is None:
            item = self._changes[(root, item_id)] = ItemChange(root, item_id, "update")
        return item


def _to_py(value: Any) -> Any:
    return value.to_py() if hasattr(value, "to_py") else value


def _field(root: Map, item_id: str, field_name: str) -> Any:
    item = root.get(item_id)
    return item.get(field_name) if isinstance(item, Map) else None
