"""Centers register public CKKS evaluation keys, so the service can map their encrypted queries.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "evaluation_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("center_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("file", sa.String(length=200), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["center_id"], ["centers.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("center_id", "key_id"),
    )
    op.create_index(op.f("ix_evaluation_keys_center_id"), "evaluation_keys", ["center_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_evaluation_keys_center_id"), table_name="evaluation_keys")
    op.drop_table("evaluation_keys")
