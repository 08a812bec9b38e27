"""Versions of a canvas: restoring a live document to a stored version, and diffing two JSON views.

Pure document logic on pycrdt ``Doc``/``Map`` and plain JSON; no I/O, no awaits.
Imports only pycrdt and ``crdt``; never ``storage`` or ``app``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pycrdt import Array, Doc, Map, Text

from .canvas import ELEMENTS, LAYERS, META, is_number, roots, to_json, to_py


def load_version(state: bytes) -> Doc:
    """Decode a stored full state (``Doc.get_update()`` bytes) into a detached document.

    Raises:
        ValueError: ``state`` is not a Yjs update.
    """
    doc = Doc()
    try:
        doc.apply_update(state)
    except Exception as exc:  # pycrdt raises untyped errors on corrupt input
        raise ValueError("stored state is not a Yjs update") from exc
    return doc


def same(a: Any, b: Any) -> bool:
    """JSON equality as a client sees it: ``1 == 1.0`` but ``True != 1``, ``{} != []``, ``None != 0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if is_number(a) or is_number(b):
        return is_number(a) and is_number(b) and a == b
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same(a[key], b[key]) for key in a)
        )
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


def restore(live: Doc, version: Doc) -> int:
    """Make the canvas roots of ``live`` (elements, layers, meta) equal to those of ``version``.

    Writes only what differs: keys absent from ``version`` are deleted, differing values are set
    (maps present on both sides are updated key by key, so concurrent edits of other properties
    survive), missing keys are added with copies of the version's values. Equal values are never
    written, so restoring a document that already equals ``version`` writes nothing and produces no
    Yjs update. Afterwards ``to_json(live)`` equals ``to_json(version)``.

    Call it inside one transaction on ``live`` (``Room.transact``) so that the whole restore is one
    update; ``version`` is only read.

    Args:
        live: the document to change.
        version: the document to copy (e.g. from :func:`load_version`).

    Returns:
        How many writes (sets and deletes) were made; 0 means ``live`` was already equal.
    """
    writes = 0
    for live_root, version_root in zip(roots(live), roots(version), strict=True):
        writes += _sync_map(live_root, version_root)
    return writes


def _sync_map(live: Map, version: Map) -> int:
    writes = 0
    wanted = set(version.keys())
    for key in [key for key in live.keys() if key not in wanted]:
        del live[key]
        writes += 1
    for key in sorted(wanted):
        target = version[key]
        if key in live:
            current = live[key]
            if isinstance(current, Map) and isinstance(target, Map):
                writes += _sync_map(current, target)
                continue
            if same(to_py(current), to_py(target)):
                continue
        live[key] = _copy(target)
        writes += 1
    return writes


def _copy(value: Any) -> Any:
    """A value that can be inserted into another document: shared types become new preliminary ones."""
    if isinstance(value, Map):
        return Map({key: _copy(item) for key, item in value.items()})
    if isinstance(value, Array):
        return Array([_copy(item) for item in value])
    if isinstance(value, Text):
        return Text(str(value))
    return to_py(value)


# -- diff -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PropertyChange:
    """One property that differs: ``before``/``after`` are absent (``None`` with ``kind``) when missing.

    Attributes:
        kind: ``added`` (only in the newer version), ``removed`` (only in the older) or ``changed``.
        before: the value in the older version (``None`` when added).
        after: the value in the newer version (``None`` when removed).
    """

    kind: str
    before: Any = None
    after: Any = None


@dataclass(slots=True)
class ItemsDiff:
    """How a map of items (elements or layers) differs between two versions.

    Attributes:
        added: items only in the newer version, with all their properties.
        removed: items only in the older version, with all their properties.
        changed: items in both that differ, with one ``PropertyChange`` per differing property.
    """

    added: dict[str, Any] = field(default_factory=dict)
    removed: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, dict[str, PropertyChange]] = field(default_factory=dict)


@dataclass(slots=True)
class CanvasDiff:
    """What changed from one JSON view of a canvas to another (``before`` -> ``after``)."""

    elements: ItemsDiff
    layers: ItemsDiff
    meta: dict[str, PropertyChange]

    @property
    def empty(self) -> bool:
        """True when the two versions are equal."""
        return not self.meta and all(
            not (items.added or items.removed or items.changed) for items in (self.elements, self.layers)
        )


def diff(before: dict[str, Any], after: dict[str, Any]) -> CanvasDiff:
    """Compare two JSON views of a canvas (as from :func:`crdt.canvas.to_json`).

    Elements and layers are compared per item and, for items on both sides, per top-level property
    (a nested value that differs is reported whole); ``meta`` per key. Values are compared with
    :func:`same`.

    Args:
        before: the older version.
        after: the newer version.

    Returns:
        The differences; ``CanvasDiff.empty`` when there are none.
    """
    return CanvasDiff(
        elements=_diff_items(before.get(ELEMENTS) or {}, after.get(ELEMENTS) or {}),
        layers=_diff_items(before.get(LAYERS) or {}, after.get(LAYERS) or {}),
        meta=_diff_properties(before.get(META) or {}, after.get(META) or {}),
    )


def _diff_items(before: dict[str, Any], after: dict[str, Any]) -> ItemsDiff:
    result = ItemsDiff()
    for item_id in sorted(before.keys() | after.keys()):
        if item_id not in after:
            result.removed[item_id] = before[item_id]
        elif item_id not in before:
            result.added[item_id] = after[item_id]
        else:
            old, new = before[item_id], after[item_id]
            if isinstance(old, dict) and isinstance(new, dict):
                changes = _diff_properties(old, new)
            elif same(old, new):
                changes = {}
            else:  # not an object on one side: report the item as one value
                changes = {"": PropertyChange("changed", old, new)}
            if changes:
                result.changed[item_id] = changes
    return result


def _diff_properties(before: dict[str, Any], after: dict[str, Any]) -> dict[str, PropertyChange]:
    changes: dict[str, PropertyChange] = {}
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            changes[key] = PropertyChange("removed", before=before[key])
        elif key not in before:
            changes[key] = PropertyChange("added", after=after[key])
        elif not same(before[key], after[key]):
            changes[key] = PropertyChange("changed", before[key], after[key])
    return changes


def version_json(state: bytes) -> dict[str, Any]:
    """The JSON view (:func:`crdt.canvas.to_json`) of a stored full state.

    Raises:
        ValueError: ``state`` is not a Yjs update.
    """
    return to_json(load_version(state))


__all__ = [
    "CanvasDiff",
    "ItemsDiff",
    "PropertyChange",
    "diff",
    "load_version",
    "restore",
    "same",
    "version_json",
]
