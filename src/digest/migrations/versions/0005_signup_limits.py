"""Signup rate-limit windows shared by every web process.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import digest.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signup_limits",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("window_start", digest.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_signup_limits_window_start", "signup_limits", ["window_start"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_signup_limits_window_start", table_name="signup_limits")
    op.drop_table("signup_limits")
