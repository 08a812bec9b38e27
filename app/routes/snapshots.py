"""``/api/v1/canvases/{canvas_id}/snapshots``: named versions, their JSON, diffs, and restore.

Read permission lists, reads and diffs snapshots; write takes one; admin restores (PROTOCOL.md section 0).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse

from crdt.versions import diff, version_json

from ..auth import Role
from ..deps import CanvasId, PrincipalDep, SnapshotId, require_canvas_role
from ..errors import NotFound
from ..node import NodeDep
from ..schemas import (
    ERROR_RESPONSES,
    SNAPSHOT_ID_PATTERN,
    Cursor,
    Diff,
    Limit,
    Page,
    RestoreResult,
    Snapshot,
    SnapshotCreate,
    SnapshotVersion,
    diff_json,
    snapshot_model,
)

router = APIRouter(
    prefix="/api/v1/canvases/{canvas_id}/snapshots", tags=["snapshots"], responses=ERROR_RESPONSES
)

NOW = "now"
DiffTarget = Annotated[
    str,
    Query(
        pattern=f"^({NOW}|{SNAPSHOT_ID_PATTERN.strip('^$')})$",
        description="`now` (the current canvas) or another snapshot id",
    ),
]


@router.post(
    "", response_model=Snapshot, status_code=status.HTTP_201_CREATED, summary="Store a named version"
)
async def create_snapshot(
    canvas_id: CanvasId, node: NodeDep, principal: PrincipalDep, body: SnapshotCreate | None = None
) -> Snapshot:
    """Store the canvas' current state (live if loaded on this node, else stored) as a `manual` snapshot.

    Manual snapshots are kept until the canvas is deleted.
    """
    require_canvas_role(principal, canvas_id, Role.WRITE)
    label = body.label if body is not None else None
    info = await node.canvases.take_snapshot(
        canvas_id, label=label, kind="manual", author_id=principal.user_id
    )
    if info is None:
        raise NotFound(f"no canvas {canvas_id}")
    return snapshot_model(info)


@router.get("", response_model=Page[Snapshot], summary="List versions, newest first")
async def list_snapshots(
    canvas_id: CanvasId,
    node: NodeDep,
    principal: PrincipalDep,
    limit: Annotated[Limit, Query()] = 50,
    cursor: Annotated[Cursor, Query()] = None,
) -> Page[Snapshot]:
    """Every snapshot of the canvas (manual, automatic and pre-restore) with author, time and size."""
    require_canvas_role(principal, canvas_id, Role.READ)
    offset = int(cursor or 0)
    infos = await node.canvases.bounded(
        node.store.list_snapshots(canvas_id, limit=limit + 1, offset=offset), "listing snapshots"
    )
    if not infos and offset == 0 and not await node.canvases.exists(canvas_id):
        raise NotFound(f"no canvas {canvas_id}")
    return Page(
        items=[snapshot_model(info) for info in infos[:limit]],
        next_cursor=str(offset + limit) if len(infos) > limit else None,
    )


@router.get("/{snapshot_id}", response_model=SnapshotVersion, summary="A version as JSON")
async def get_snapshot(
    canvas_id: CanvasId, snapshot_id: SnapshotId, node: NodeDep, principal: PrincipalDep
) -> JSONResponse:
    """The snapshot's description and the canvas as it was then (`elements`, `layers`, `meta`)."""
    require_canvas_role(principal, canvas_id, Role.READ)
    info, state = await node.canvases.snapshot(canvas_id, snapshot_id)
    body = {"snapshot": snapshot_model(info).model_dump(mode="json", by_alias=True), **version_json(state)}
    return JSONResponse(body)


@router.get("/{snapshot_id}/diff", response_model=Diff, summary="Diff a version against now or another")
async def diff_snapshot(
    canvas_id: CanvasId,
    snapshot_id: SnapshotId,
    node: NodeDep,
    principal: PrincipalDep,
    to: DiffTarget = NOW,
) -> JSONResponse:
    """What changed from this version to `to` (the current canvas by default, or another snapshot):
    elements and layers added, removed and changed (per property, with before and after), and
    `meta` keys.
    """
    require_canvas_role(principal, canvas_id, Role.READ)
    _, state = await node.canvases.snapshot(canvas_id, snapshot_id)
    before = version_json(state)
    if to == NOW:
        after, _ = await node.canvases.current_json(canvas_id)
    else:
        _, other = await node.canvases.snapshot(canvas_id, to)
        after = version_json(other)
    return JSONResponse(diff_json(diff(before, after), from_=snapshot_id, to=to))


@router.post("/{snapshot_id}/restore", response_model=RestoreResult, summary="Restore this version (admin)")
async def restore_snapshot(
    canvas_id: CanvasId, snapshot_id: SnapshotId, node: NodeDep, principal: PrincipalDep
) -> RestoreResult:
    """Make the live canvas equal to this version through one ordinary CRDT change.

    Every connected editor (Yjs and JSON) receives the change and converges without reconnecting.
    Before changing anything, the current canvas is stored as a `pre_restore` snapshot: restore that
    one to undo. Restoring a version the canvas already equals changes nothing (`changed: false`).
    The change is in the activity feed under the caller's user id, and the canvas' editors are
    notified.
    """
    require_canvas_role(principal, canvas_id, Role.ADMIN)
    outcome = await node.canvases.restore(
        canvas_id, snapshot_id, user_id=principal.user_id, user_name=principal.name
    )
    if outcome.writes:
        editors = await node.canvases.editors(canvas_id)
        await node.notifier.canvas_restored(canvas_id, snapshot_id, principal, editors - {principal.user_id})
    return RestoreResult(
        canvas_id=canvas_id,
        snapshot_id=snapshot_id,
        changed=outcome.writes > 0,
        writes=outcome.writes,
        pre_restore_snapshot_id=outcome.pre_restore.id if outcome.pre_restore else None,
    )
