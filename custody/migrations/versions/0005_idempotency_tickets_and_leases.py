"""idempotency: tickets and leases, so a retry can finish a call whose process died

Reservations made before this revision have neither and keep the old answer (still in
progress) rather than risk doing their work a second time.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 22:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ticket", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency", schema=None) as batch_op:
        batch_op.drop_column("lease_until")
        batch_op.drop_column("ticket")
