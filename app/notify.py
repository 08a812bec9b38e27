"""Notifications: ``notification`` messages on ``user:ID:notifications`` and canvas channels.

Sent by other services (``POST /api/v1/users/{id}/notifications`` with the API key) and by the server
itself when a canvas is restored or deleted. Publishing goes through the JSON channel protocol's
publisher, so every subscribed session receives them with an offset, and history replays them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .auth import Principal
from .channels import canvas_channel

log = logging.getLogger(__name__)

Publish = Callable[[str, dict[str, Any]], Awaitable[int]]
"""Publish a server message (``type`` and ``data``) on a channel; returns its offset."""


def user_channel(user_id: str) -> str:
    """``user:<user_id>:notifications``: only that user may subscribe to it."""
    return f"user:{user_id}:notifications"


def notification(kind: str, title: str, body: str, link: str | None = None, **extra: Any) -> dict[str, Any]:
    """A ``notification`` message (PROTOCOL.md: ``{kind, title, body, link?}``, plus ``extra`` fields)."""
    data: dict[str, Any] = {"kind": kind, "title": title, "body": body}
    if link is not None:
        data["link"] = link
    data.update(extra)
    return {"type": "notification", "data": data}


class Notifier:
    """Publishes notifications through the channel publisher (``Gateway.publish_message``).

    Args:
        publish: publishes a server message on a channel and returns its offset.
    """

    def __init__(self, publish: Publish) -> None:
        self._publish = publish

    async def notify_user(self, user_id: str, message: dict[str, Any]) -> tuple[str, int]:
        """Publish ``message`` on ``user:<user_id>:notifications``; returns the channel and offset.

        Raises:
            InvalidRequest: ``user_id`` cannot be part of a channel name.
        """
        channel = user_channel(user_id)
        return channel, await self._publish(channel, message)

    async def canvas_restored(
        self, canvas_id: str, snapshot_id: str, by: Principal, editors: Iterable[str]
    ) -> None:
        """Tell the canvas' channel and its editors that ``by`` restored version ``snapshot_id``."""
        message = notification(
            "canvas_restored",
            f"Canvas {canvas_id} was restored",
            f"{by.name} restored the version {snapshot_id}.",
            canvasId=canvas_id,
            snapshotId=snapshot_id,
            user={"id": by.user_id, "name": by.name},
        )
        await self._fan_out(canvas_id, message, editors)

    async def canvas_deleted(self, canvas_id: str, by: Principal, editors: Iterable[str]) -> None:
        """Tell the canvas' channel and its editors that ``by`` deleted the canvas."""
        message = notification(
            "canvas_deleted",
            f"Canvas {canvas_id} was deleted",
            f"{by.name} deleted the canvas.",
            canvasId=canvas_id,
            user={"id": by.user_id, "name": by.name},
        )
        await self._fan_out(canvas_id, message, editors)

    async def _fan_out(self, canvas_id: str, message: dict[str, Any], editors: Iterable[str]) -> None:
        channels = [canvas_channel(canvas_id)] + [user_channel(user) for user in sorted(set(editors))]
        for channel in channels:
            try:
                await self._publish(channel, message)
            except Exception as exc:  # a notification is best effort: the change itself is done
                log.warning(
                    "canvas notification failed",
                    extra={"canvas_id": canvas_id, "channel": channel, "error": type(exc).__name__},
                )
