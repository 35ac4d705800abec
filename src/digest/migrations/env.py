"""Alembic environment: migrations run on a synchronous connection handed over by digest.db."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from digest.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is not None:
    context.configure(
        connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///digest.db")
    with engine.begin() as conn:
        context.configure(
            connection=conn, target_metadata=Base.metadata, render_as_batch=True, compare_type=True
        )
        with context.begin_transaction():
            context.run_migrations()
