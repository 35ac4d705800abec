"""Schema migrations (alembic) and the check that refuses an outdated schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    create_engine,
)

from digest.errors import SchemaError
from digest.store import Database, sync_url


def _alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "digest:migrations")
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return cfg


def _sync_engine_for(url: str) -> Any:
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(sync_url(url), connect_args={"timeout": 30} if url.startswith("sqlite") else {})


def migrate(url: str, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade the schema to the newest revision (or to `revision`); returns (old, new) revisions."""
    engine = _sync_engine_for(url)
    try:
        with engine.begin() as conn:
            if url.startswith("sqlite"):
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            before = MigrationContext.configure(conn).get_current_revision()
            cfg = _alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            after = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return before, after or ""


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config("sqlite:///:memory:")).get_current_head()
    assert head is not None
    return head


async def check_schema(db: Database) -> None:
    """Refuse to run on a missing or outdated schema, saying which command fixes it."""
    head = head_revision()

    def current(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with db.reader.connect() as conn:
        rev = await conn.run_sync(current)
    if rev is None:
        raise SchemaError("the database has no schema yet: run `digest init`")
    if rev != head:
        raise SchemaError(
            f"the database schema is at revision {rev}, this code needs {head}: run `digest migrate`"
        )
