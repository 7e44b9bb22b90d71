"""field items: a job's item kind, and each item's text and per-digit details

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # The server default makes every existing job a digit job, and keeps a submitter that does not
    # know the column yet (a rolling upgrade) writing digit jobs that read correctly.
    op.add_column(
        "jobs",
        sa.Column("kind", sa.String(16), nullable=False, server_default="digit"),
    )
    op.add_column("items", sa.Column("text", sa.Text(), nullable=True))
    op.add_column("items", sa.Column("details", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35+): batch mode would copy and drop ``jobs``, and with foreign
    # keys on, dropping it deletes every item through ON DELETE CASCADE.
    op.drop_column("items", "details")
    op.drop_column("items", "text")
    op.drop_column("jobs", "kind")
