"""``Annotated`` dependencies of the REST routes: the caller (Bearer JWT or API key) and validated ids.

Tokens and keys are never logged; errors say what was missing, never what was sent.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Path
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .auth import Principal, Role
from .errors import AuthFailed, Forbidden
from .node import NodeDep
from .schemas import CANVAS_ID_PATTERN, SNAPSHOT_ID_PATTERN, USER_ID_PATTERN

API_KEY_HEADER = "X-API-Key"

_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="The same JWT as the WebSockets (PROTOCOL.md section 0): `Authorization: Bearer <JWT>`.",
)
_api_key = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="The server-side key `MAILY_API_KEY`, for other services (notifications).",
)


async def get_principal(
    node: NodeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller, from ``Authorization: Bearer <JWT>``.

    Raises:
        AuthFailed: no bearer token, or one that does not verify (401).
    """
    if credentials is None:
        raise AuthFailed("expected an Authorization: Bearer <JWT> header")
    return node.auth.verify(credentials.credentials)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_api_key(node: NodeDep, key: Annotated[str | None, Depends(_api_key)]) -> None:
    """Accept the request only with the configured ``X-API-Key`` (compared in constant time).

    Raises:
        Forbidden: no key is configured on this server (``MAILY_API_KEY`` unset), so none can match.
        AuthFailed: the header is missing or wrong.
    """
    configured = node.settings.api_key
    if configured is None:
        raise Forbidden("server-side calls are disabled: MAILY_API_KEY is not set on this server")
    if key is None or not hmac.compare_digest(key.encode(), configured.get_secret_value().encode()):
        raise AuthFailed(f"expected a valid {API_KEY_HEADER} header")


ApiKeyDep = Annotated[None, Depends(require_api_key)]

CanvasId = Annotated[str, Path(pattern=CANVAS_ID_PATTERN, description="the canvas id")]
SnapshotId = Annotated[str, Path(pattern=SNAPSHOT_ID_PATTERN, description="a snapshot id (`snp_` + 16 hex)")]
UserId = Annotated[str, Path(pattern=USER_ID_PATTERN, description="the user id (the tokens' `sub`)")]


def require_canvas_role(principal: Principal, canvas_id: str, role: Role) -> None:
    """Raise ``Forbidden`` unless ``principal`` has at least ``role`` on ``canvas_id``.

    Checked before looking the canvas up, so a caller without access cannot learn whether it exists.
    """
    if principal.canvas_role(canvas_id) < role:
        raise Forbidden(f"needs {role.name.lower()} permission on canvas {canvas_id}")
