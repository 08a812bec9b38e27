"""``/api/v1/channels/{channel}/publish``: server-side publish for other services (API key only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status
from fastapi.exceptions import RequestValidationError

from ..codec import dump_json
from ..deps import ApiKeyDep
from ..node import NodeDep
from ..schemas import ERROR_RESPONSES, Published, PublishRequest

router = APIRouter(prefix="/api/v1/channels", tags=["channels"], responses=ERROR_RESPONSES)

ChannelName = Annotated[
    str,
    Path(
        max_length=200,
        description="`canvas:ID`, `canvas:ID:cursor`, `canvas:ID:ai`, `user:ID:notifications`, `ai_mesh:ID`",
    ),
]


@router.post(
    "/{channel}/publish",
    response_model=Published,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Publish on a channel (API key)",
)
async def publish(channel: ChannelName, body: PublishRequest, node: NodeDep, _: ApiKeyDep) -> Published:
    """Publish `{type, data}` as the server on `channel` (PROTOCOL.md section 3).

    For other services: authenticated by the `X-API-Key` header (`MAILY_API_KEY`). Subscribers receive
    it like any publication, with `channel` and `offset`, `sessionId` `server`, on every node; it is
    kept in the channel's history (except on `:cursor` channels). 503 when the broker (Redis) is down:
    then nothing was published. `data` may be at most the JSON protocol's message
    size limit (`MAILY_MAX_MESSAGE_BYTES`).
    """
    size = len(dump_json(body.data))
    limit = node.settings.max_message_bytes
    if size > limit:
        message = f"expected at most {limit} bytes of JSON, got {size}"
        raise RequestValidationError([{"loc": ("body", "data"), "msg": message, "type": "too_long"}])
    publication = await node.gateway.publish(channel, body.type, body.data)
    return Published(channel=channel, offset=publication.offset, epoch=publication.epoch)
