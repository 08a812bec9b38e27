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
    if not _CANVAS_ID.match(canvas_id):
        raise ValueError(f"expected a canvas id matching {_CANVAS_ID.pattern}, got {canvas_id!r}")
    return f"{_DOC_KIND}:{canvas_id}:{_DOC_SUFFIX}"


def parse_doc_channel(name: str) -> str | None:
    """The canvas id of a ``doc_channel`` name, or None when ``name`` is not one."""
    parts = name.split(":")
    if len(parts) != 3 or parts[0] != _DOC_KIND or parts[2] != _DOC_SUFFIX:
        return None
    return parts[1] if _CANVAS_ID.match(parts[1]) else None
