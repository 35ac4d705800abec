"""Schema migrations (alembic) and the check that refuses an outdated schema.

Every command checks the schema, so the check reads `alembic_version` with one query and takes
the newest revision from the migration files' own `revision = "…"` lines; alembic itself (a
third of a second to import) loads only to migrate.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, create_engine, inspect, text

from digest.errors import SchemaError
from digest.store import Database, sync_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

VERSIONS = Path(__file__).resolve().parents[1] / "migrations" / "versions"
_REVISION_LINE = re.compile(r'^(revision|down_revision)\s*(?::[^=]*)?=\s*(?:"([^"]+)"|None)', re.MULTILINE)


def _alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

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
    from alembic import command
    from alembic.runtime.migration import MigrationContext

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


@functools.cache
def head_revision() -> str:
    """The newest revision: the one no other migration names as its `down_revision`."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in VERSIONS.glob("*.py"):
        for kind, value in _REVISION_LINE.findall(script.read_text(encoding="utf-8")):
            if value:
                (revisions if kind == "revision" else parents).add(value)
    heads = revisions - parents
    assert len(heads) == 1, f"the migrations have {len(heads)} heads: {sorted(heads)}"
    return heads.pop()


async def check_schema(db: Database) -> None:
    """Refuse to run on a missing or outdated schema, saying which command fixes it."""
    head = head_revision()

    def current(conn: Connection) -> str | None:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    async with db.reader.connect() as conn:
        rev = await conn.run_sync(current)
    if rev is None:
        raise SchemaError("the database has no schema yet: run `digest init`")
    if rev != head:
        raise SchemaError(
            f"the database schema is at revision {rev}, this code needs {head}: run `digest migrate`"
        )
