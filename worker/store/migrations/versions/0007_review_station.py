"""review station: kept crops, operators, the keying audit trail, item locks, final values

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

AWAITING = "status = 'needs_review' AND source IS NULL"
# The audit trail is only ever added to: the database itself refuses to change it.
_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER keyings_no_{verb.lower()} BEFORE {verb} ON keyings "
    "BEGIN SELECT RAISE(ABORT, 'keyings are an audit trail: never updated nor deleted'); END"
    for verb in ("UPDATE", "DELETE")
]
_PG_FUNCTION = """
CREATE FUNCTION keyings_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'keyings are an audit trail: never updated nor deleted';
END;
$$ LANGUAGE plpgsql
"""
_PG_TRIGGER = (
    "CREATE TRIGGER keyings_no_change BEFORE UPDATE OR DELETE ON keyings "
    "FOR EACH ROW EXECUTE FUNCTION keyings_refuse_change()"
)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table(
        "crops",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("stored", sa.DateTime(timezone=True), nullable=False),
        # Last: SQLite keeps the small columns in the row's page, the bytes in overflow pages.
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "operators",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.UniqueConstraint("name", name="uq_operators_name"),
    )
    op.add_column(
        "jobs", sa.Column("double_key", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("items", sa.Column("final", sa.Text(), nullable=True))
    op.add_column("items", sa.Column("source", sa.String(16), nullable=True))
    if sqlite:
        # SQLite adds a column with its reference in one statement (ALTER TABLE ... ADD CONSTRAINT
        # does not exist there, and batch mode would copy ``items``).
        op.execute("ALTER TABLE items ADD COLUMN crop_sha256 VARCHAR(64) REFERENCES crops (sha256)")
    else:
        op.add_column("items", sa.Column("crop_sha256", sa.String(64), nullable=True))
        op.create_foreign_key(None, "items", "crops", ["crop_sha256"], ["sha256"])
    op.create_index("ix_items_crop_sha256", "items", ["crop_sha256"])
    # What the model settled before this version: its reading is the final value.
    op.execute(
        "UPDATE items SET source = 'model', final = COALESCE(text, CAST(digit AS VARCHAR)) "
        "WHERE status = 'ok'"
    )
    op.execute("UPDATE items SET source = 'model' WHERE status = 'blank'")
    op.create_index(
        "ix_items_awaiting",
        "items",
        ["id"],
        sqlite_where=sa.text(AWAITING),
        postgresql_where=sa.text(AWAITING),
    )
    op.create_table(
        "keyings",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("items.id"), nullable=False),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("operator_id", sa.Integer(), sa.ForeignKey("operators.id"), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("unreadable", sa.Boolean(), nullable=False),
        sa.Column("keyed", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_keyings_item", "keyings", ["item_id"])
    op.create_index("ix_keyings_operator", "keyings", ["operator_id", "keyed"])
    if sqlite:
        for trigger in _SQLITE_TRIGGERS:
            op.execute(trigger)
    else:
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    op.create_table(
        "item_locks",
        sa.Column(
            "item_id",
            sa.Integer(),
            sa.ForeignKey("items.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "operator_id",
            sa.Integer(),
            sa.ForeignKey("operators.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_item_locks_operator", "item_locks", ["operator_id"])
    op.create_table(
        "login_failures",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("first", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.drop_table("login_failures")
    op.drop_table("item_locks")
    if sqlite:
        for verb in ("update", "delete"):
            op.execute(f"DROP TRIGGER keyings_no_{verb}")
    op.drop_table("keyings")  # PostgreSQL drops the table's trigger with it
    if not sqlite:
        op.execute("DROP FUNCTION keyings_refuse_change()")
    op.drop_index("ix_items_awaiting", table_name="items")
    op.drop_index("ix_items_crop_sha256", table_name="items")
    if not sqlite:
        op.drop_constraint("items_crop_sha256_fkey", "items", type_="foreignkey")
    # Plain DROP COLUMN (see 0004); SQLite refuses to drop a column with a reference, so the
    # reference goes with a copy there (nothing cascades: items is not the parent of anything
    # deleted by the copy, and foreign keys are checked on the connection, not in the copy).
    for column in ("crop_sha256", "source", "final"):
        if sqlite and column == "crop_sha256":
            with op.batch_alter_table("items") as batch:
                batch.drop_column(column)
        else:
            op.drop_column("items", column)
    op.drop_column("jobs", "double_key")
    op.drop_table("operators")
    op.drop_table("crops")
