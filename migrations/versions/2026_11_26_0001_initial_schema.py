"""Initial schema: documents, their update log (document_updates) and snapshots.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 10:49:23+00:00

Written from reviewed autogenerate output (SQLite), with dialect-neutral server defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("canvas_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=True),
        sa.Column("version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("canvas_id", name=op.f("pk_documents")),
    )
    op.create_table(
        "document_updates",
        # INTEGER on SQLite: only an INTEGER PRIMARY KEY autoincrements there. BIGSERIAL on PostgreSQL.
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("canvas_id", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("node_id", sa.String(length=255), nullable=False),
        sa.Column("elements", sa.Text(), server_default="[]", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["canvas_id"],
            ["documents.canvas_id"],
            name=op.f("fk_document_updates_canvas_id_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_document_updates")),
    )
    op.create_index(
        op.f("ix_document_updates_canvas_id_id"), "document_updates", ["canvas_id", "id"], unique=False
    )
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("canvas_id", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("author_id", sa.String(length=255), nullable=True),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("update_count", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("kind IN ('manual', 'auto', 'pre_restore')", name=op.f("ck_snapshots_kind")),
        sa.ForeignKeyConstraint(
            ["canvas_id"],
            ["documents.canvas_id"],
            name=op.f("fk_snapshots_canvas_id_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshots")),
    )
    op.create_index(
        op.f("ix_snapshots_canvas_id_created_at"), "snapshots", ["canvas_id", "created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_snapshots_canvas_id_created_at"), table_name="snapshots")
    op.drop_table("snapshots")
    op.drop_index(op.f("ix_document_updates_canvas_id_id"), table_name="document_updates")
    op.drop_table("document_updates")
    op.drop_table("documents")
