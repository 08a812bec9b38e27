"""``/api/v1/users/{user_id}/notifications``: server-side delivery of notifications (API key only)."""

from __future__ import annotations

from fastapi import APIRouter, status

from ..deps import ApiKeyDep, UserId
from ..node import NodeDep
from ..notify import notification
from ..schemas import ERROR_RESPONSES, NotificationCreate, NotificationSent

router = APIRouter(prefix="/api/v1/users", tags=["notifications"], responses=ERROR_RESPONSES)


@router.post(
    "/{user_id}/notifications",
    response_model=NotificationSent,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Notify a user (API key)",
)
async def notify_user(
    user_id: UserId, body: NotificationCreate, node: NodeDep, _: ApiKeyDep
) -> NotificationSent:
    """Publish a `notification` (`{kind, title, body, link?}`) on `user:<user_id>:notifications`.

    For other services: authenticated by the `X-API-Key` header (`MAILY_API_KEY`), not by a JWT.
    Every session of that user subscribed to the channel receives it, on any node; it stays in the
    channel's history for resumption like any publication.
    """
    channel, offset = await node.notifier.notify_user(
        user_id, notification(body.kind, body.title, body.body, body.link)
    )
    return NotificationSent(channel=channel, offset=offset)
