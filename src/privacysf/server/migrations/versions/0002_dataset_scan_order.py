"""Datasets record the scan order of their codes, so a job never mixes keyed and row-major codes.

Datasets stored before this revision are marked ``row-major`` (their files are not read here); should
one hold keyed codes, a job still cannot mix it with row-major ones: the job runner reads each
dataset's scan order from its code headers again when it merges them, and fails such a job.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scan", sa.String(length=16), nullable=False, server_default="row-major")
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("scan")
