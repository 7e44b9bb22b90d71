"""jobs, items and models

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(200), nullable=True),
        sa.Column("review_threshold", sa.Float(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("queue", sa.String(32), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Integer(), nullable=False),
        sa.Column("blank", sa.Integer(), nullable=False),
        sa.Column("error", sa.Integer(), nullable=False),
        sa.Column("needs_review", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=True),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("digit", sa.Integer(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("top3", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("multiple_blobs", sa.Boolean(), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=True),
        sa.Column("processed", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("job_id", "key", name="uq_items_job_key"),
    )
    op.create_index("ix_items_job_status", "items", ["job_id", "status"])
    op.create_table(
        "models",
        sa.Column("version", sa.String(100), primary_key=True),
        sa.Column("arch", sa.String(50), nullable=False),
        sa.Column("test_accuracy", sa.Float(), nullable=True),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("registered", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("models")
    op.drop_index("ix_items_job_status", table_name="items")
    op.drop_table("items")
    op.drop_table("jobs")
