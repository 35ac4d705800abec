"""Indexes for the hot paths: the claim's order, signup's confirmation lookup, and the counts
/metrics and status read (issue 18).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

DUE = "status IN ('pending', 'deferred')"  # models.DUE_STATUSES_SQL, frozen as of this revision


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.create_index(
            "ix_deliveries_due",
            ["priority", "next_attempt_at", "id"],
            unique=False,
            sqlite_where=sa.text(DUE),
            postgresql_where=sa.text(DUE),
        )
        batch_op.create_index("ix_deliveries_kind_status", ["kind", "status"], unique=False)
        batch_op.create_index("ix_deliveries_sent_at", ["sent_at"], unique=False)
        batch_op.create_index("ix_deliveries_updated_at", ["updated_at"], unique=False)
    with op.batch_alter_table("events") as batch_op:
        batch_op.create_index(
            "ix_events_subscription", ["subscription_id", "kind", "created_at"], unique=False
        )
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.create_index("ix_subscribers_status", ["status"], unique=False)
    with op.batch_alter_table("subscriptions") as batch_op:
        batch_op.create_index("ix_subscriptions_list", ["list_id", "status", "cadence"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch_op:
        batch_op.drop_index("ix_subscriptions_list")
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.drop_index("ix_subscribers_status")
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_index("ix_events_subscription")
    with op.batch_alter_table("deliveries") as batch_op:
        for name in ("ix_deliveries_updated_at", "ix_deliveries_sent_at", "ix_deliveries_kind_status"):
            batch_op.drop_index(name)
        batch_op.drop_index("ix_deliveries_due")
