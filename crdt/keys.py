"""Names of internal broker channels, built and parsed here only, as pairs.

Pure string functions; imports nothing from ``app`` or ``storage``.
"""

from __future__ import annotations

import re

_CANVAS_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# The JSON channel validator (``app/channels.py``) accepts only the kinds ``canvas``, ``user`` and
# ``ai_mesh``, so no client can subscribe or publish to a name of this kind. The fixed suffix keeps
# the name from ending in ``:cursor`` (which ``broker.is_ephemeral`` reads as history-less) even for
# a canvas called ``cursor``.
_DOC_KIND = "yjs"
_DOC_SUFFIX = "updates"


def doc_channel(canvas_id: str) -> str:
    """The broker channel relaying ``canvas_id``'s Yjs document between nodes: ``yjs:ID:updates``.

    Raises:
        ValueError: ``canvas_id`` is not a valid canvas id.
    """
    return _internal_channel(canvas_id, _DOC_SUFFIX)


def parse_doc_channel(name: str) -> str | None:
    """The canvas id of a ``doc_channel`` name, or None when ``name`` is not one."""
    return _parse_internal_channel(name, _DOC_SUFFIX)


_AWARENESS_SUFFIX = "cursor"  # ends in ":cursor": the broker keeps no history of it (ephemeral)


def awareness_channel(canvas_id: str) -> str:
    """The broker channel relaying ``canvas_id``'s Yjs awareness between nodes: ``yjs:ID:cursor``.

    Raises:
        ValueError: ``canvas_id`` is not a valid canvas id.
    """
    return _internal_channel(canvas_id, _AWARENESS_SUFFIX)


def parse_awareness_channel(name: str) -> str | None:
    """The canvas id of an ``awareness_channel`` name, or None when ``name`` is not one."""
    return _parse_internal_channel(name, _AWARENESS_SUFFIX)


def _internal_channel(canvas_id: str, suffix: str) -> str:
    if not _CANVAS_ID.match(canvas_id):
        raise ValueError(f"expected a canvas id matching {_CANVAS_ID.pattern}, got {canvas_id!r}")
    return f"{_DOC_KIND}:{canvas_id}:{suffix}"


def _parse_internal_channel(name: str, suffix: str) -> str | None:
    parts = name.split(":")
    if len(parts) != 3 or parts[0] != _DOC_KIND or parts[2] != suffix:
        return None
    return parts[1] if _CANVAS_ID.match(parts[1]) else None


# -- Redis keys ------------------------------------------------------------------------------------
# Every key starts with a prefix (``maily`` by default) so that several deployments can share one
# Redis. A channel's two keys share the hash tag ``{<channel>}``: the publish script touches both.


def _tagged(prefix: str, kind: str, name: str, suffix: str) -> str:
    return f"{prefix}:{kind}:{{{name}}}:{suffix}"


def _untag(prefix: str, kind: str, key: str, suffix: str) -> str | None:
    head, tail = f"{prefix}:{kind}:{{", f"}}:{suffix}"
    if not key.startswith(head) or not key.endswith(tail) or len(key) <= len(head) + len(tail):
        return None
    return key[len(head) : -len(tail)]


def channel_meta_key(prefix: str, channel: str) -> str:
    """The hash holding a channel's ``epoch`` and last ``offset``: ``<prefix>:ch:{<channel>}:meta``."""
    return _tagged(prefix, "ch", channel, "meta")


def parse_channel_meta_key(prefix: str, key: str) -> str | None:
    """The channel of a ``channel_meta_key``, or None when ``key`` is not one."""
    return _untag(prefix, "ch", key, "meta")


def channel_log_key(prefix: str, channel: str) -> str:
    """The stream of a channel's publications (entry id ``<offset>-0``): ``<prefix>:ch:{<channel>}:log``."""
    return _tagged(prefix, "ch", channel, "log")


def parse_channel_log_key(prefix: str, key: str) -> str | None:
    """The channel of a ``channel_log_key``, or None when ``key`` is not one."""
    return _untag(prefix, "ch", key, "log")


def node_probe_key(prefix: str, node_id: str) -> str:
    """A node's private stream of liveness probes and reader wake-ups: ``<prefix>:node:{<id>}:probe``."""
    return _tagged(prefix, "node", node_id, "probe")


def parse_node_probe_key(prefix: str, key: str) -> str | None:
    """The node id of a ``node_probe_key``, or None when ``key`` is not one."""
    return _untag(prefix, "node", key, "probe")


def session_key(prefix: str, session_id: str) -> str:
    """A parked (resumable) JSON-protocol session: ``<prefix>:session:{<session_id>}:state``."""
    return _tagged(prefix, "session", session_id, "state")


def parse_session_key(prefix: str, key: str) -> str | None:
    """The session id of a ``session_key``, or None when ``key`` is not one."""
    return _untag(prefix, "session", key, "state")


def presence_key(prefix: str, canvas_id: str) -> str:
    """A canvas's participants (sorted set, score: lease expiry ms): ``<prefix>:presence:{<id>}:users``."""
    return _tagged(prefix, "presence", canvas_id, "users")


def parse_presence_key(prefix: str, key: str) -> str | None:
    """The canvas id of a ``presence_key``, or None when ``key`` is not one."""
    return _untag(prefix, "presence", key, "users")


def presence_member(user_id: str, node_id: str, user_name: str) -> str:
    """One user on one node, as a member of a ``presence_key`` set: ``<node>\\n<user>\\n<name>``."""
    return f"{node_id}\n{user_id}\n{user_name}"


def parse_presence_member(member: str) -> tuple[str, str, str] | None:
    """``(user_id, node_id, user_name)`` of a ``presence_member``, or None when it is not one."""
    parts = member.split("\n", 2)
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return None
    return parts[1], parts[0], parts[2]


def rate_key(prefix: str, user_id: str) -> str:
    """A user's cluster-wide token bucket (hash ``tokens``, ``stamp``): ``<prefix>:rate:{<user>}:bucket``."""
    return _tagged(prefix, "rate", user_id, "bucket")


def parse_rate_key(prefix: str, key: str) -> str | None:
    """The user id of a ``rate_key``, or None when ``key`` is not one."""
    return _untag(prefix, "rate", key, "bucket")


def connections_key(prefix: str, user_id: str) -> str:
    """A user's connections per node (hash ``node -> count:expiry_ms``): ``<prefix>:conn:{<user>}:nodes``."""
    return _tagged(prefix, "conn", user_id, "nodes")


def parse_connections_key(prefix: str, key: str) -> str | None:
    """The user id of a ``connections_key``, or None when ``key`` is not one."""
    return _untag(prefix, "conn", key, "nodes")


def live_session_key(prefix: str, session_id: str) -> str:
    """Which node holds a connected JSON-protocol session: ``<prefix>:session:{<session_id>}:live``."""
    return _tagged(prefix, "session", session_id, "live")


def parse_live_session_key(prefix: str, key: str) -> str | None:
    """The session id of a ``live_session_key``, or None when ``key`` is not one."""
    return _untag(prefix, "session", key, "live")


# A node's control channel on the broker (session takeovers). Like ``doc_channel`` it is of a kind the
# JSON channel validator never accepts, so no client can subscribe or publish to it.
_NODE_KIND = "node"
_CONTROL_SUFFIX = "control"


def control_channel(node_id: str) -> str:
    """The broker channel of requests to node ``node_id``: ``node:<node_id>:control``."""
    return f"{_NODE_KIND}:{node_id}:{_CONTROL_SUFFIX}"


def parse_control_channel(name: str) -> str | None:
    """The node id of a ``control_channel`` name, or None when ``name`` is not one."""
    head, tail = f"{_NODE_KIND}:", f":{_CONTROL_SUFFIX}"
    if not name.startswith(head) or not name.endswith(tail) or len(name) <= len(head) + len(tail):
        return None
    return name[len(head) : -len(tail)]
