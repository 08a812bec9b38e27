"""The AI assistant interface that ``ai_request`` is routed to, and the default: no assistant.

A real design analyser comes with its own issue; until then the server says honestly that AI is
unavailable (``error`` ``AI_UNAVAILABLE``) instead of inventing suggestions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class AiRequest:
    """One ``ai_request``: the canvas as JSON (``crdt.canvas.to_json``), the prompt and the selection."""

    canvas_id: str
    request_id: str
    prompt: str
    canvas: dict[str, Any]
    selected_elements: tuple[str, ...] = ()
    user_id: str = ""


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One suggestion of an ``ai_response`` (``{type, value, message, elementId?, severity?}``)."""

    type: str
    value: Any
    message: str
    element_id: str | None = None
    severity: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.type, "value": self.value, "message": self.message}
        if self.element_id is not None:
            wire["elementId"] = self.element_id
        if self.severity is not None:
            wire["severity"] = self.severity
        return wire


@dataclass(frozen=True, slots=True)
class AssistantIdentity:
    """How the assistant appears as a participant (publisher of its ``ai_response`` messages)."""

    id: str
    name: str
    extra: dict[str, Any] = field(default_factory=dict)


class Assistant(Protocol):
    """Answers ``ai_request``s with batches of suggestions.

    ``available`` is checked before a request is accepted; ``answer`` is iterated in the requesting
    connection's task group, and each batch becomes one ``ai_response`` on ``canvas:ID:ai``.
    """

    identity: AssistantIdentity

    @property
    def available(self) -> bool:
        """Whether the assistant can answer at all right now."""
        ...

    def answer(self, request: AiRequest) -> AsyncIterator[list[Suggestion]]:
        """Yield batches of suggestions for ``request``; may raise any ``Exception`` on failure."""
        ...


class UnavailableAssistant:
    """The default: no assistant is configured, so every request is refused with ``AI_UNAVAILABLE``."""

    identity = AssistantIdentity("ai_none", "No assistant")

    @property
    def available(self) -> bool:
        return False

    async def answer(self, request: AiRequest) -> AsyncIterator[list[Suggestion]]:
        """Never called (``available`` is False); yields nothing."""
        return
        yield []  # pragma: no cover - makes this an async generator
