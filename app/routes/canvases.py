"""``/api/v1/canvases``: list, read (as JSON), delete, and the activity feed of canvases.

Permissions are the WebSockets' (PROTOCOL.md section 0): read to list and read, admin to delete.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import JSONResponse

from ..auth import Principal, Role
from ..deps import CanvasId, PrincipalDep, require_canvas_role
from ..errors import NotFound
from ..node import NodeDep
from ..schemas import (
    ERROR_RESPONSES,
    ActivityEntry,
    Canvas,
    CanvasSummary,
    Cursor,
    Limit,
    Page,
)

router = APIRouter(prefix="/api/v1/canvases", tags=["canvases"], responses=ERROR_RESPONSES)

_CANVAS_PREFIX = "canvas:"


@router.get("", response_model=Page[CanvasSummary], summary="List the canvases the caller may read")
async def list_canvases(
    node: NodeDep,
    principal: PrincipalDep,
    limit: Annotated[Limit, Query()] = 50,
    cursor: Annotated[Cursor, Query()] = None,
) -> Page[CanvasSummary]:
    """Stored canvases the token has at least read permission on, ordered by id.

    A token with `canvas:*` sees every canvas; otherwise only the canvases its `perms` name.
    """
    offset = int(cursor or 0)
    readable = _readable_canvas_ids(principal)
    documents = await node.canvases.bounded(
        node.store.list_documents(limit=limit + 1, offset=offset, canvas_ids=readable), "listing canvases"
    )
    items = [
        CanvasSummary(
            canvas_id=document.canvas_id,
            live=node.rooms.get(document.canvas_id) is not None,
            version=document.version,
            state_size_bytes=document.state_size_bytes,
            created_at=document.created_at,
            updated_at=document.updated_at,
        )
        for document in documents[:limit]
    ]
    return Page(items=items, next_cursor=str(offset + limit) if len(documents) > limit else None)


def _readable_canvas_ids(principal: Principal) -> list[str] | None:
    """``None`` (all canvases) for a ``canvas:*`` reader, else the canvas ids the token names."""
    if principal.role_for(f"{_CANVAS_PREFIX}*") >= Role.READ:
        return None
    return sorted(
        resource.removeprefix(_CANVAS_PREFIX)
        for resource, role in principal.perms.items()
        if resource.startswith(_CANVAS_PREFIX) and resource.count(":") == 1 and role >= Role.READ
    )


@router.get("/{canvas_id}", response_model=Canvas, summary="The canvas as JSON")
async def get_canvas(canvas_id: CanvasId, node: NodeDep, principal: PrincipalDep) -> JSONResponse:
    """The canvas in the schema of DESIGN.md: `elements`, `layers`, `meta`.

    Read from the live document when this node has the canvas loaded (`source: live`), else from
    storage (`source: stored`). Fields are returned as clients wrote them, unknown ones included.
    """
    require_canvas_role(principal, canvas_id, Role.READ)
    document, live = await node.canvases.current_json(canvas_id)
    return JSONResponse({"canvasId": canvas_id, "source": "live" if live else "stored", **document})


@router.delete(
    "/{canvas_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a canvas (admin)",
)
async def delete_canvas(canvas_id: CanvasId, node: NodeDep, principal: PrincipalDep) -> Response:
    """Delete the canvas with its update log and snapshots.

    Its connected Yjs clients are closed with 4404 (canvas deleted), and its editors are notified.
    """
    require_canvas_role(principal, canvas_id, Role.ADMIN)
    existed, editors = await node.canvases.delete(canvas_id)
    if not existed:
        raise NotFound(f"no canvas {canvas_id}")
    node.auto_snapshots.forget(canvas_id)
    await node.notifier.canvas_deleted(canvas_id, principal, editors - {principal.user_id})
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{canvas_id}/activity",
    response_model=Page[ActivityEntry],
    summary="Who changed which elements when",
)
async def get_activity(
    canvas_id: CanvasId,
    node: NodeDep,
    principal: PrincipalDep,
    limit: Annotated[Limit, Query()] = 50,
    cursor: Annotated[Cursor, Query()] = None,
) -> Page[ActivityEntry]:
    """The canvas' update log, newest first: one entry per accepted update (or restore), with the
    user who made it, the node that accepted it and the elements it touched.

    Includes every update accepted on this node before the request.
    """
    require_canvas_role(principal, canvas_id, Role.READ)
    await node.canvases.wait_durable()
    if not await node.canvases.exists(canvas_id):
        raise NotFound(f"no canvas {canvas_id}")
    before_id = int(cursor) if cursor is not None else None
    entries = await node.canvases.bounded(
        node.store.activity(canvas_id, limit=limit + 1, before_id=before_id), "reading the activity"
    )
    items = [
        ActivityEntry(
            id=entry.id,
            user_id=entry.user_id,
            node_id=entry.node_id,
            elements=list(entry.elements),
            created_at=entry.created_at,
        )
        for entry in entries[:limit]
    ]
    return Page(items=items, next_cursor=str(items[-1].id) if len(entries) > limit else None)
