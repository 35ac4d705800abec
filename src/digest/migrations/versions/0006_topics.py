"""Topics: what a list offers, which articles match each, and each reader's choice.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "topics",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("list_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("rest", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["list_id"], ["lists.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("list_id", "slug", name="uq_topics_list_slug"),
    )
    op.create_table(
        "article_topics",
        sa.Column("article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("topic_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(["article_id"], ["articles.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["topic_id"], ["topics.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("article_id", "topic_id"),
    )
    op.create_index("ix_article_topics_topic", "article_topics", ["topic_id", "article_id"])
    with op.batch_alter_table("articles") as batch_op:
        batch_op.add_column(sa.Column("categories", sa.JSON(), nullable=True))
    with op.batch_alter_table("subscriptions") as batch_op:
        batch_op.add_column(sa.Column("topics", sa.Text(), nullable=True))
        batch_op.create_index("ix_subscriptions_topics", ["list_id", "status", "topics"], unique=False)
    with op.batch_alter_table("editions") as batch_op:
        batch_op.add_column(sa.Column("topics", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("editions") as batch_op:
        batch_op.drop_column("topics")
    with op.batch_alter_table("subscriptions") as batch_op:
        batch_op.drop_index("ix_subscriptions_topics")
        batch_op.drop_column("topics")
    with op.batch_alter_table("articles") as batch_op:
        batch_op.drop_column("categories")
    op.drop_index("ix_article_topics_topic", table_name="article_topics")
    op.drop_table("article_topics")
    op.drop_table("topics")
