"""key owners: tenancy of keys

A key belongs to the tenant whose key administrator created it; other tenants get a
404 for it. Keys created before this revision are given to the tenant whose wallet
holds them, or else to the tenant of their earliest sign request, so an upgrade does
not lock anybody out of their own keys (a key nobody here has used stays nobody's).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 08:54:04.589319
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_owners",
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("label"),
    )
    with op.batch_alter_table("key_owners", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_key_owners_tenant"), ["tenant"], unique=False)
    op.execute("INSERT INTO key_owners (label, tenant, created_at) "
               "SELECT key_label, tenant, created_at FROM wallets")
    op.execute("INSERT INTO key_owners (label, tenant, created_at) "
               "SELECT r.key_label, r.tenant, r.created_at FROM sign_requests r "
               "WHERE r.created_at = (SELECT MIN(o.created_at) FROM sign_requests o "
               "                      WHERE o.key_label = r.key_label) "
               "AND r.key_label NOT IN (SELECT label FROM key_owners) "
               "AND r.id = (SELECT MIN(f.id) FROM sign_requests f "
               "            WHERE f.key_label = r.key_label "
               "            AND f.created_at = r.created_at)")


def downgrade() -> None:
    with op.batch_alter_table("key_owners", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_key_owners_tenant"))
    op.drop_table("key_owners")
