"""approver enrolments: devices and passkeys waiting for, or holding, an admin's decision

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 08:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approver_enrolments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("credential_type", sa.String(length=16), nullable=False),
        sa.Column("credential", sa.Text(), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("credential_id", sa.String(length=1400), nullable=True),
        sa.Column("challenge", sa.String(length=128), nullable=True),
        sa.Column("hsm_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint"),
    )
    with op.batch_alter_table("approver_enrolments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_approver_enrolments_status"), ["status"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("approver_enrolments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approver_enrolments_status"))
    op.drop_table("approver_enrolments")
