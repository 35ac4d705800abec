"""The database edge: engines and transactions here, every query named in the rooms below.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
`BEGIN IMMEDIATE`: the write lock is taken up front, so two processes never both read under a
shared lock and then deadlock upgrading it ("database is locked"). Reads use a second engine
whose transactions begin deferred, so readers never wait for writers. PostgreSQL uses one engine;
its row locks and advisory locks give the same guarantees between machines.
"""

from __future__ import annotations

import importlib.util
import secrets
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from digest.errors import ConfigError
from digest.models import Setting


def _async_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    # The driver is the optional `postgres` extra, so a SQLite-only install stays small.
    if importlib.util.find_spec("psycopg") is None:
        raise ConfigError(
            "database.url is PostgreSQL but its driver is not installed: pip install 'digest[postgres]'"
        )
    return "postgresql+psycopg://" + url[len("postgresql://") :]


def sync_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        return url
    return _async_url(url)


def resolve_url(url: str, base_dir: Path) -> str:
    """Make a relative SQLite path relative to the config file's folder."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///") :]
        if rel != ":memory:":
            return "sqlite:///" + str((base_dir / rel).resolve())
    return url


def _sqlite_engine(url: str, immediate: bool) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level, so the BEGIN below is the only one issued.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _postgres_engine(url: str) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=10, max_overflow=10)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # psycopg prepares a statement run five times, and PostgreSQL then settles on a generic
        # plan that cannot see the parameters: compose's claim (ids IN a list, with a topic choice)
        # went from the primary key to an index range of every reader, 30 ms a chunk instead of
        # 1.5 ms. Prepared statements are kept (no parsing); each run is planned for its values.
        cursor = dbapi_connection.cursor()
        cursor.execute("SET plan_cache_mode = force_custom_plan")
        cursor.close()
        dbapi_connection.commit()

    return engine


class Database:
    """Engines and transactions for one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        aurl = _async_url(url)
        if self.is_sqlite:
            self.writer = _sqlite_engine(aurl, immediate=True)
            self.reader = _sqlite_engine(aurl, immediate=False)
        else:
            self.writer = self.reader = _postgres_engine(aurl)
        self._write = async_sessionmaker(self.writer, expire_on_commit=False)
        self._read = async_sessionmaker(self.reader, expire_on_commit=False)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction: committed on success, rolled back on error."""
        async with self._write() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read() as session, session.begin():
            yield session

    async def close(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


@asynccontextmanager
async def exclusive(db: Database, name: str) -> AsyncIterator[bool]:
    """Whether this process holds the lock called `name` for the duration of the block: a
    PostgreSQL session advisory lock, so several processes run a job once; SQLite is one machine
    whose write lock already serialises, so the answer there is always yes."""
    if db.is_sqlite:
        yield True
        return
    key = zlib.crc32(name.encode())
    async with db.writer.connect() as conn:
        got = bool((await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar_one())
        await conn.commit()
        try:
            yield got
        finally:
            if got:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                await conn.commit()


def is_outage(exc: BaseException) -> bool:
    """The database is away or busy (down, restarting, unreachable, locked): worth waiting for,
    unlike a constraint or a bug, which no amount of waiting fixes."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | OSError | TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def describe_error(exc: BaseException) -> str:
    """One line for a log: the driver's own message, without SQLAlchemy's statement dump."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text_ = " ".join(str(inner).split())
    return f"{type(inner).__name__}: {text_[:200]}" if text_ else type(inner).__name__


async def db_now(session: AsyncSession, wanted: datetime) -> datetime:
    """`wanted` (the caller's clock) read off the database's clock, so that workers on several
    machines agree about leases; a simulated clock (`tick --now`) keeps its offset. SQLite is local."""
    if is_postgres(session):
        value = (await session.execute(text("SELECT clock_timestamp()"))).scalar_one()
        assert isinstance(value, datetime)
        return value + (wanted - datetime.now(UTC))
    return wanted


async def get_or_create_setting(session: AsyncSession, key: str, make: str | None = None) -> str:
    """A value generated once and shared by every process (e.g. a signing key)."""
    found = await session.get(Setting, key)
    if found:
        return found.value
    value = make if make is not None else secrets.token_urlsafe(32)
    await session.execute(
        dialect_insert(session, Setting).values(key=key, value=value).on_conflict_do_nothing()
    )
    again = await session.get(Setting, key)
    assert again is not None
    return again.value


async def add_to_counter(session: AsyncSession, key: str, amount: int) -> None:
    """A process's count (kept while the database was away) added to the shared one."""
    current = await session.get(Setting, key, with_for_update=True)
    if current is None:
        await session.execute(
            dialect_insert(session, Setting).values(key=key, value="0").on_conflict_do_nothing()
        )
        current = await session.get(Setting, key, with_for_update=True)
    assert current is not None
    current.value = str(int(current.value or 0) + amount)


async def counter(session: AsyncSession, key: str) -> int:
    found = await session.get(Setting, key)
    return int(found.value) if found is not None and found.value.isdigit() else 0


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def dialect_insert(session: AsyncSession, table: Any) -> Any:
    """INSERT with ON CONFLICT support for the session's dialect."""
    return pg_insert(table) if is_postgres(session) else sqlite_insert(table)
