"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from storage.db import ping

from ..node import NodeDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(node: NodeDep) -> dict[str, str]:
    """The process is up and serving HTTP; ``nodeId`` names the node that answered."""
    return {"status": "ok", "nodeId": node.settings.node_id}


@router.get("/readyz")
async def readyz(node: NodeDep) -> JSONResponse:
    """Ready when the database answers (and Redis, when configured); says which one failed."""
    checks: dict[str, str] = {}
    try:
        await ping(node.engine)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    checks["update_log"] = "ok" if node.update_log.healthy else "retrying"
    if node.cluster is not None:
        checks.update(await node.cluster.checks())
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )
