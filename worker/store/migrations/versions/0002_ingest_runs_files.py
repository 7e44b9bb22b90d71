"""ingest runs and ingested files

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "ingest_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("inbox", sa.String(1000), nullable=False),
        sa.Column("done", sa.String(1000), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
    )
    op.create_table(
        "ingested_files",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column(
            "job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column(
            "run_id",
            sa.String(36),
            sa.ForeignKey("ingest_runs.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("ingested", sa.DateTime(timezone=True), nullable=False),
        # The idempotency guarantee: two runs racing over one file cannot both record it.
        sa.UniqueConstraint("sha256", name="uq_ingested_files_sha256"),
    )


def downgrade() -> None:
    op.drop_table("ingested_files")
    op.drop_table("ingest_runs")
