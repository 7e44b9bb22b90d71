"""jobs.cancelled: when a person stopped the job (store.cancels)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("cancelled", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # The code before this revision knows no cancelled job: it would wait for one for ever.
    # Such a job is final, its pending items errors: give it the status its counts say.
    op.execute(
        "UPDATE jobs SET status = CASE WHEN error = total THEN 'failed' "
        "WHEN error > 0 THEN 'partial' ELSE 'done' END WHERE status = 'cancelled'"
    )
    op.drop_column("jobs", "cancelled")  # a plain DROP COLUMN on both (see 0004)
