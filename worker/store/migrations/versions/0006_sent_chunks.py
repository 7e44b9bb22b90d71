"""sent chunks: a copy of each chunk's crops until it is written, for the sweeper to send again

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "sent_chunks",
        sa.Column(
            "job_id",
            sa.String(36),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("chunk", sa.String(64), primary_key=True),
        sa.Column("queue", sa.String(32), nullable=False),
        sa.Column("touched", sa.DateTime(timezone=True), nullable=False),
        # Last: SQLite keeps a row's first bytes in its page and the rest in overflow pages, so
        # the sweeper reads the small columns without walking through the crops.
        sa.Column("crops", sa.JSON(), nullable=False),
    )
    op.create_index("ix_sent_chunks_touched", "sent_chunks", ["touched"])


def downgrade() -> None:
    op.drop_index("ix_sent_chunks_touched", table_name="sent_chunks")
    op.drop_table("sent_chunks")
