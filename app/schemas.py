"""Request and response models of the REST API (``/api/v1``), shared by the routers in ``app/routes``.

JSON field names are camelCase, as in the WebSocket protocol. No I/O here: models and conversions only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic.alias_generators import to_camel

from crdt.versions import CanvasDiff, ItemsDiff, PropertyChange
from storage.records import SnapshotInfo

T = TypeVar("T")

CANVAS_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
SNAPSHOT_ID_PATTERN = r"^snp_[0-9a-f]{16}$"
USER_ID_PATTERN = r"^[A-Za-z0-9_.@+-]{1,128}$"  # as app/channels.py accepts in user:ID:notifications


class ApiModel(BaseModel):
    """Base of the API's models: camelCase on the wire, Python names in code."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# -- errors ------------------------------------------------------------------------------------------


class FieldError(ApiModel):
    field: str = Field(description="where the bad value is, e.g. `query.limit` or `body.label`")
    message: str


class ErrorDetail(ApiModel):
    code: str = Field(description="stable upper-case code, e.g. `NOT_FOUND`, `VALIDATION_FAILED`")
    message: str = Field(description="what was expected and what was got")
    field: str | None = Field(default=None, description="the first invalid field, for validation errors")
    details: list[FieldError] | None = Field(default=None, description="every invalid field")


class ErrorResponse(ApiModel):
    """Every error of the REST API: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (401, "missing, invalid or expired token"),
        (403, "the token does not allow this"),
        (404, "no such canvas or snapshot"),
        (422, "a path, query or body field is invalid (`error.field` says which)"),
        (503, "the database is unreachable; retry with backoff"),
    )
}


# -- pagination --------------------------------------------------------------------------------------

Limit = Annotated[int, Field(ge=1, le=200, description="page size")]
Cursor = Annotated[
    str | None,
    Field(
        pattern=r"^[0-9]{1,18}$",
        description="`nextCursor` of the previous page; omit for the first page",
    ),
]


class Page(ApiModel, Generic[T]):
    """One page of a list. Pass ``nextCursor`` back as ``cursor`` to get the next; ``null`` at the end."""

    items: list[T]
    next_cursor: str | None = None


# -- canvas documents (the schema of DESIGN.md) ----------------------------------------------------------


class Document(BaseModel):
    """Fields of canvas documents are kept as clients wrote them: unknown ones included."""

    model_config = ConfigDict(extra="allow")


class LockHolder(Document):
    id: str | None = None
    name: str | None = None
    until: float | None = Field(default=None, description="epoch milliseconds")


class Element(Document):
    """One element of ``elements`` (every field optional: the server keeps what clients wrote)."""

    id: str | None = None
    type: str | None = Field(default=None, description="rect, ellipse, text, line, image or frame")
    x: float | None = None
    y: float | None = None
    width: float | None = None
    height: float | None = None
    rotation: float | None = None
    fill: str | None = None
    stroke: str | None = None
    text: str | None = None
    fontSize: float | None = None
    layerId: str | None = None
    z: float | None = None
    lockedBy: LockHolder | None = None
    createdBy: str | None = None
    updatedAt: float | None = Field(default=None, description="epoch milliseconds")


class Layer(Document):
    id: str | None = None
    name: str | None = None
    visible: bool | None = None
    locked: bool | None = None
    order: float | None = None


class Meta(Document):
    title: str | None = None
    width: float | None = None
    height: float | None = None
    background: str | None = None


class CanvasContent(BaseModel):
    """A canvas document as JSON: ``elements``, ``layers`` and ``meta`` (DESIGN.md "schema")."""

    elements: dict[str, Element] = Field(default_factory=dict)
    layers: dict[str, Layer] = Field(default_factory=dict)
    meta: Meta = Field(default_factory=Meta)


class Canvas(CanvasContent):
    """The current canvas: from the live document when this node has it loaded, else from storage."""

    canvasId: str
    source: Literal["live", "stored"] = Field(description="`live`: the loaded document; `stored`: storage")


class CanvasSummary(ApiModel):
    canvas_id: str
    live: bool = Field(description="loaded on this node right now")
    version: int = Field(description="number of compactions of its update log")
    state_size_bytes: int = Field(description="size of the compacted state (the log tail not counted)")
    created_at: datetime
    updated_at: datetime = Field(description="last compaction (edits are in `/activity`)")


class ActivityEntry(ApiModel):
    id: int = Field(description="log position; larger is newer")
    user_id: str | None = Field(description="who made the change; `null` for server-made changes")
    node_id: str
    elements: list[str] = Field(description="ids of the elements the change touched")
    created_at: datetime


# -- snapshots -----------------------------------------------------------------------------------------


class SnapshotCreate(ApiModel):
    label: str | None = Field(default=None, max_length=200, description="a name for this version")


class Snapshot(ApiModel):
    id: str
    canvas_id: str
    label: str | None
    kind: Literal["manual", "auto", "pre_restore"] = Field(
        description="`manual` (POST), `auto` (periodic) or `pre_restore` (taken before a restore)"
    )
    author_id: str | None = Field(description="who took it; `null` for automatic snapshots")
    size_bytes: int
    created_at: datetime


class SnapshotVersion(CanvasContent):
    """A stored version of the canvas, as JSON."""

    snapshot: Snapshot


class Change(BaseModel):
    kind: Literal["added", "removed", "changed"]
    before: JsonValue = Field(default=None, description="value in the older version (absent: `null`)")
    after: JsonValue = Field(default=None, description="value in the newer version (absent: `null`)")


class ItemChanges(BaseModel):
    added: dict[str, Element | Layer] = Field(description="items only in the newer version")
    removed: dict[str, Element | Layer] = Field(description="items only in the older version")
    changed: dict[str, dict[str, Change]] = Field(description="per item, per differing property")


class Diff(BaseModel):
    """Differences from ``from`` (older) to ``to`` (newer)."""

    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from", description="snapshot id")
    to: str = Field(description="snapshot id, or `now` for the current canvas")
    equal: bool
    elements: ItemChanges
    layers: ItemChanges
    meta: dict[str, Change]


class RestoreResult(ApiModel):
    canvas_id: str
    snapshot_id: str = Field(description="the restored version")
    changed: bool = Field(description="false when the canvas already equalled that version")
    writes: int = Field(description="properties and items set or deleted by the restore")
    pre_restore_snapshot_id: str | None = Field(
        description="the automatic snapshot of the canvas just before the restore (restore it to undo)"
    )


# -- notifications ------------------------------------------------------------------------------------


class NotificationCreate(ApiModel):
    kind: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(default="", max_length=4000)
    link: str | None = Field(default=None, max_length=2000)


class NotificationSent(ApiModel):
    channel: str
    offset: int = Field(description="the publication's offset in the channel")


# -- server-side publish ----------------------------------------------------------------------------------


class PublishRequest(ApiModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", allow_inf_nan=False
    )

    type: str = Field(
        default="publication",
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="the message `type` subscribers receive",
    )
    data: dict[str, JsonValue] = Field(description="the message's `data` object")


class Published(ApiModel):
    channel: str
    offset: int = Field(description="the publication's offset in the channel")
    epoch: str = Field(
        description="the channel's epoch: the offset is meaningful within it (PROTOCOL.md 2.3)"
    )


# -- conversions ----------------------------------------------------------------------------------------


def snapshot_model(info: SnapshotInfo) -> Snapshot:
    """The API's view of a stored snapshot's description."""
    return Snapshot(
        id=info.id,
        canvas_id=info.canvas_id,
        label=info.label,
        kind=info.kind,
        author_id=info.author_id,
        size_bytes=info.size_bytes,
        created_at=info.created_at,
    )


def diff_json(result: CanvasDiff, *, from_: str, to: str) -> dict[str, Any]:
    """The JSON body of :class:`Diff` (document values are passed through as clients wrote them)."""
    return {
        "from": from_,
        "to": to,
        "equal": result.empty,
        "elements": _items_json(result.elements),
        "layers": _items_json(result.layers),
        "meta": {key: _change_json(change) for key, change in result.meta.items()},
    }


def _items_json(items: ItemsDiff) -> dict[str, Any]:
    return {
        "added": items.added,
        "removed": items.removed,
        "changed": {
            item_id: {key: _change_json(change) for key, change in changes.items()}
            for item_id, changes in items.changed.items()
        },
    }


def _change_json(change: PropertyChange) -> dict[str, Any]:
    return {"kind": change.kind, "before": change.before, "after": change.after}
