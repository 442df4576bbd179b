"""Dataset sizes are 64-bit: PostgreSQL's ``integer`` stops at 2 GiB, a limit an operator may raise past.

SQLite's integers are 64-bit already; the batch operation rebuilds its table with the new type.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.alter_column(
            "size_bytes", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.alter_column(
            "size_bytes", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False
        )
