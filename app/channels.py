"""Channel names (``<resource_type>:<resource_id>[:<sub_resource>]``) and who may subscribe to what.

Pure functions over ``Principal``; no sockets, no broker. PROTOCOL.md section 0 and 2.3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .auth import CANVAS_ID, Principal, Role
from .errors import Forbidden, InvalidRequest

_USER_ID = re.compile(r"^[A-Za-z0-9_.@+-]{1,128}$")
_RESOURCE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CANVAS_SUBRESOURCES = frozenset({"cursor", "ai"})


@dataclass(frozen=True, slots=True)
class Channel:
    """A validated channel name.

    Attributes:
        name: the full name, e.g. ``canvas:123:cursor``.
        kind: ``canvas``, ``user`` or ``ai_mesh``.
        resource_id: the id after the kind.
        sub: the sub-resource (``cursor``, ``ai``, ``notifications``) or None.
    """

    name: str
    kind: str
    resource_id: str
    sub: str | None

    @property
    def canvas_id(self) -> str | None:
        """The canvas this channel belongs to (``canvas:ID`` and its sub-channels), else None."""
        return self.resource_id if self.kind == "canvas" else None


def canvas_channel(canvas_id: str, sub: str | None = None) -> str:
    """``canvas:ID`` or ``canvas:ID:sub``; ``canvas_id`` must already be valid."""
    return f"canvas:{canvas_id}" if sub is None else f"canvas:{canvas_id}:{sub}"


def parse_channel(name: object) -> Channel:
    """Validate a channel name from a client.

    Accepted: ``canvas:ID``, ``canvas:ID:cursor``, ``canvas:ID:ai``, ``user:ID:notifications`` and
    ``ai_mesh:ID``; ids are ``[A-Za-z0-9_-]{1,64}`` (user ids also allow ``.@+``, up to 128).

    Raises:
        InvalidRequest: anything else.
    """
    if not isinstance(name, str) or len(name) > 200:
        raise InvalidRequest("channel must be a string like canvas:123")
    parts = name.split(":")
    kind = parts[0]
    if kind == "canvas" and len(parts) in (2, 3) and CANVAS_ID.match(parts[1]):
        if len(parts) == 2 or parts[2] in CANVAS_SUBRESOURCES:
            return Channel(name, kind, parts[1], parts[2] if len(parts) == 3 else None)
    elif kind == "user" and len(parts) == 3 and parts[2] == "notifications" and _USER_ID.match(parts[1]):
        return Channel(name, kind, parts[1], "notifications")
    elif kind == "ai_mesh" and len(parts) == 2 and _RESOURCE_ID.match(parts[1]):
        return Channel(name, kind, parts[1], None)
    raise InvalidRequest(
        "channel must be canvas:ID, canvas:ID:cursor, canvas:ID:ai, user:ID:notifications or ai_mesh:ID"
    )


def authorize_subscribe(principal: Principal, channel: Channel) -> None:
    """Check that ``principal`` may receive ``channel``.

    Raises:
        Forbidden: ``user:X:notifications`` of another user, or no read role on the resource.
    """
    if channel.kind == "user":
        if channel.resource_id != principal.user_id:
            raise Forbidden("user notifications are private to their user")
        return
    if principal.role_for(f"{channel.kind}:{channel.resource_id}") < Role.READ:
        raise Forbidden(f"no read permission on {channel.kind}:{channel.resource_id}")
