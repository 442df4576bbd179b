"""Tokens expire: each records when it stops being accepted.

Tokens issued before this revision never expired; they get the default lifetime (90 days) counted
from the upgrade, so no center is locked out by the upgrade itself and each has that long to rotate
(``privacysf center rotate-token``). The time is written in UTC, as every timestamp of the service.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIFETIME_OF_EARLIER_TOKENS = timedelta(days=90)


def upgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    tokens = sa.table("tokens", sa.column("expires_at", sa.DateTime(timezone=True)))
    expiry = datetime.now(timezone.utc) + LIFETIME_OF_EARLIER_TOKENS
    op.execute(tokens.update().values(expires_at=expiry))
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.alter_column("expires_at", existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
