"""Article identity: an item is known by its source's guid, its link (fragment kept) or its content;
the canonical URL and the fingerprint stop being unique, so two different stories that share a
URL (two comments on one page) or a title and an empty text (two "Photo" posts) are two articles.

`identity_url` (the link with its fragment) is what an exact copy in another source is matched
on. Existing articles get their canonical URL as a start; their keys in `article_sources` are
re-keyed when their source next shows them (store/sources.py, `_legacy_keys`), only where the
content is the same, so nothing is lost or stored twice.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# 0001 created the two unique constraints without names: SQLite needs a naming convention to find
# them again, PostgreSQL named them itself.
_SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    names = (
        ("uq_articles_url", "uq_articles_fingerprint")
        if sqlite
        else ("articles_url_key", "articles_fingerprint_key")
    )
    with op.batch_alter_table("articles", naming_convention=_SQLITE_NAMES if sqlite else None) as batch_op:
        for name in names:
            batch_op.drop_constraint(name, type_="unique")
        batch_op.add_column(sa.Column("identity_url", sa.Text(), nullable=True))
        batch_op.create_index("ix_articles_url", ["url"], unique=False)
        batch_op.create_index("ix_articles_fingerprint", ["fingerprint"], unique=False)
        batch_op.create_index("ix_articles_identity_url", ["identity_url"], unique=False)
    op.execute("UPDATE articles SET identity_url = url")


def downgrade() -> None:
    with op.batch_alter_table("articles") as batch_op:
        batch_op.drop_index("ix_articles_identity_url")
        batch_op.drop_index("ix_articles_fingerprint")
        batch_op.drop_index("ix_articles_url")
        batch_op.drop_column("identity_url")
