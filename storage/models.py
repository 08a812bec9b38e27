"""SQLAlchemy table definitions: documents, their update log, and snapshots.

The schema source of truth for Alembic (``migrations/env.py`` uses ``Base.metadata``).
Imports only ``sqlalchemy``; never ``app`` or ``crdt``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storage.records import CANVAS_ID_LENGTH, SNAPSHOT_KINDS

# Deterministic constraint/index names, so that migrations can address them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only autoincrements an "INTEGER PRIMARY KEY" (a rowid alias), not a BIGINT one.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base; ``Base.metadata`` holds every table of the service."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Document(Base):
    """One canvas: its compacted Yjs state. Uncompacted updates live in ``document_updates``."""

    __tablename__ = "documents"

    canvas_id: Mapped[str] = mapped_column(String(CANVAS_ID_LENGTH), primary_key=True)
    # Merged Yjs v1 update of everything compacted so far; NULL until the first compaction.
    state: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Bumped by every compaction that merged something.
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Last change of the stored state (creation or compaction), not of the log.
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DocumentUpdate(Base):
    """One appended Yjs update. Compaction sets ``data`` to NULL and keeps the row as activity."""

    __tablename__ = "document_updates"
    # (canvas_id, id) serves both the per-canvas log scan in id order and the canvas_id lookups
    # (including the foreign key's ON DELETE CASCADE), so canvas_id gets no index of its own.
    __table_args__ = (Index(None, "canvas_id", "id"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    canvas_id: Mapped[str] = mapped_column(
        String(CANVAS_ID_LENGTH), ForeignKey("documents.canvas_id", ondelete="CASCADE")
    )
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    user_id: Mapped[str | None] = mapped_column(String(255))
    node_id: Mapped[str] = mapped_column(String(255))
    # JSON list of the element ids the update touched.
    elements: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Snapshot(Base):
    """A named, immutable copy of a document's full state (manual, periodic, or taken before a restore)."""

    __tablename__ = "snapshots"
    # Leading canvas_id: serves the foreign key and the "newest first" listing of one canvas.
    __table_args__ = (
        Index(None, "canvas_id", "created_at"),
        CheckConstraint(f"kind IN {SNAPSHOT_KINDS!r}", name="kind"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    canvas_id: Mapped[str] = mapped_column(
        String(CANVAS_ID_LENGTH), ForeignKey("documents.canvas_id", ondelete="CASCADE")
    )
    label: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    author_id: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[bytes] = mapped_column(LargeBinary)
    size_bytes: Mapped[int] = mapped_column(Integer)
    # How many log updates the document had seen when the snapshot was taken (informational).
    update_count: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
