"""The delivery hot path's two statements, on driver connections of their own: "is this row still
mine to send, and its reader and edition still good?" just before each send, and "these messages
went out" after.

Both run once per message or group of messages, so every layer between them and the driver
shows in the send rate. The outcome writer commits what every connection just sent before the
connection may send again, so that write is on the critical path of every message. An ORM
session per group costs a SELECT of the held rows, a statement built per call, an executemany and
a COMMIT, each a thread hop on aiosqlite. Here it is one statement that updates only the rows this
worker still holds and returns them, in one round trip:

- PostgreSQL: `UPDATE … FROM unnest(…)` on an autocommit psycopg connection;
- SQLite: `UPDATE … FROM json_each(?)` between `BEGIN IMMEDIATE` and `COMMIT` on a plain sqlite3
  connection, on the event loop unless another writer holds the lock (see _SqliteStatements).

Any other outcome (failed, deferred, unknown, skipped) has side effects (events, watermarks,
suppression) and goes through the ORM path in ledger.finish_deliveries. The check is the same
query as ledger.send_checks, as one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy.exc import OperationalError

from digest.store.ledger import SendCheck

T = TypeVar("T")


@dataclass(frozen=True)
class Sent:
    """One message the relay accepted."""

    delivery_id: int
    attempts: int  # the new count, this attempt included
    code: int | None
    reply: str | None
    relay: str | None
    at: datetime


class HotPath(Protocol):
    async def record_sent(self, owner: str, sent: Sequence[Sent]) -> set[int]:
        """Mark `sent` as sent where `owner` still holds the lease; returns the ids it did not hold."""
        ...

    async def send_checks(self, owner: str, ids: Sequence[int]) -> dict[int, SendCheck]:
        """What ledger.send_checks returns, for the same rows."""
        ...

    async def close(self) -> None: ...


_SQLITE_SENT = """
UPDATE deliveries SET
  status = 'sent', attempts = u.attempts, smtp_code = u.code, smtp_reply = u.reply,
  relay = u.relay, sent_at = u.at, updated_at = u.at, lease_owner = NULL, lease_expires_at = NULL
FROM (
  SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS attempts,
         json_extract(value, '$[2]') AS code, json_extract(value, '$[3]') AS reply,
         json_extract(value, '$[4]') AS relay, json_extract(value, '$[5]') AS at
  FROM json_each(?)
) AS u
WHERE deliveries.id = u.id AND deliveries.lease_owner = ? AND deliveries.status = 'sending'
RETURNING deliveries.id
"""

_CHECKS = """
SELECT d.id, d.lease_owner = {owner} AND d.status = 'sending', e.status, s.status, r.status
FROM deliveries AS d
LEFT JOIN editions AS e ON e.id = d.edition_id
LEFT JOIN subscriptions AS s ON s.id = d.subscription_id
LEFT JOIN subscribers AS r ON r.id = s.subscriber_id
WHERE d.id {ids}
"""
_SQLITE_CHECKS = _CHECKS.format(owner="?", ids="IN (SELECT value FROM json_each(?))")
_POSTGRES_CHECKS = _CHECKS.format(owner="%s", ids="= ANY(%s::bigint[])")


def _checks(rows: Sequence[Sequence[Any]]) -> dict[int, SendCheck]:
    return {int(r[0]): SendCheck(bool(r[1]), r[2], r[3], r[4]) for r in rows}


_POSTGRES_SENT = """
UPDATE deliveries AS d SET
  status = 'sent', attempts = u.attempts, smtp_code = u.code, smtp_reply = u.reply,
  relay = u.relay, sent_at = u.at, updated_at = u.at, lease_owner = NULL, lease_expires_at = NULL
FROM unnest(%s::bigint[], %s::int[], %s::int[], %s::text[], %s::text[], %s::timestamptz[])
  AS u(id, attempts, code, reply, relay, at)
WHERE d.id = u.id AND d.lease_owner = %s AND d.status = 'sending'
RETURNING d.id
"""


def _sqlite_time(at: datetime) -> str:
    """How SQLAlchemy's SQLite DateTime stores an aware UTC time (naive text, always microseconds),
    so comparisons with the rows other statements wrote stay textual and exact."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class _SqliteConnection:
    """A plain sqlite3 connection, used from one thread at a time: one call per statement group.

    `busy_ms` 0 makes a statement that would wait for another writer fail at once instead, which
    is what lets the event loop try it without ever blocking on a lock."""

    def __init__(self, path: str, busy_ms: int) -> None:
        self.path, self.busy_ms = path, busy_ms
        self.conn: sqlite3.Connection | None = None
        self.lock = threading.Lock()

    def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self.lock:
            if self.conn is None:
                self.conn = sqlite3.connect(
                    self.path, timeout=self.busy_ms / 1000, isolation_level=None, check_same_thread=False
                )
                self.conn.execute(f"PRAGMA busy_timeout={self.busy_ms}")
                self.conn.execute("PRAGMA synchronous=NORMAL")
            conn = self.conn
            try:
                return work(conn)
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    # The same outage type the ORM path raises ("database is locked"), so the
                    # caller waits it out the same way.
                    raise OperationalError("sqlite3", None, exc) from exc
                raise

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None


class _SqliteStatements:
    """Each call is tried first on the event loop, on a connection that never waits for a lock:
    in WAL mode a read, or a write of a few rows, takes tens of microseconds, less than the hop to
    a thread and back. Only when another writer holds the lock does the call go to a thread, on a
    connection that waits for it (the busy timeout every other connection has)."""

    def __init__(self, path: str) -> None:
        self.now, self.waiting = _SqliteConnection(path, 0), _SqliteConnection(path, 30_000)

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return self.now.run(work)
        except OperationalError as exc:
            if not isinstance(exc.orig, sqlite3.OperationalError) or "lock" not in str(exc.orig):
                raise
        return await asyncio.to_thread(self.waiting.run, work)

    def close(self) -> None:
        self.now.close()
        self.waiting.close()


class SqliteHotPath:
    """A writer and a reader, each one call per group (see _SqliteStatements)."""

    def __init__(self, path: str) -> None:
        self.writer, self.reader = _SqliteStatements(path), _SqliteStatements(path)

    async def record_sent(self, owner: str, sent: Sequence[Sent]) -> set[int]:
        ordered = sorted(sent, key=lambda s: s.delivery_id)  # one lock order for every worker
        payload = json.dumps(
            [[s.delivery_id, s.attempts, s.code, s.reply, s.relay, _sqlite_time(s.at)] for s in ordered]
        )

        def record(conn: sqlite3.Connection) -> set[int]:
            conn.execute("BEGIN IMMEDIATE")
            held = {int(r[0]) for r in conn.execute(_SQLITE_SENT, (payload, owner)).fetchall()}
            conn.execute("COMMIT")
            return held

        held = await self.writer.run(record)
        return {s.delivery_id for s in ordered} - held

    async def send_checks(self, owner: str, ids: Sequence[int]) -> dict[int, SendCheck]:
        params = (owner, json.dumps(list(ids)))
        return _checks(await self.reader.run(lambda c: c.execute(_SQLITE_CHECKS, params).fetchall()))

    async def close(self) -> None:
        self.writer.close()
        self.reader.close()


class _PostgresConnection:
    """An autocommit psycopg connection: each statement is its own transaction, one round trip."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        import psycopg

        try:
            if self.conn is None or self.conn.closed:
                self.conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            cur = await self.conn.execute(sql, params, prepare=True)
            return list(await cur.fetchall())
        except psycopg.OperationalError as exc:
            await self.close()  # a broken connection is opened again for the next statement
            raise OperationalError(sql, None, exc) from exc

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with contextlib.suppress(Exception):
                await conn.close()


class PostgresHotPath:
    def __init__(self, url: str) -> None:
        self.writer, self.reader = _PostgresConnection(url), _PostgresConnection(url)

    async def record_sent(self, owner: str, sent: Sequence[Sent]) -> set[int]:
        ordered = sorted(sent, key=lambda s: s.delivery_id)
        params = (
            [s.delivery_id for s in ordered],
            [s.attempts for s in ordered],
            [s.code for s in ordered],
            [s.reply for s in ordered],
            [s.relay for s in ordered],
            [s.at for s in ordered],
            owner,
        )
        held = {int(r[0]) for r in await self.writer.fetch(_POSTGRES_SENT, params)}
        return {s.delivery_id for s in ordered} - held

    async def send_checks(self, owner: str, ids: Sequence[int]) -> dict[int, SendCheck]:
        return _checks(await self.reader.fetch(_POSTGRES_CHECKS, (owner, list(ids))))

    async def close(self) -> None:
        await self.writer.close()
        await self.reader.close()


def hot_path(url: str) -> HotPath | None:
    """The connections for a plain database URL (`sqlite:///…` or `postgresql://…`); None for an
    in-memory SQLite database, which a second connection would not see."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        return None if path in ("", ":memory:") else SqliteHotPath(path)
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    return PostgresHotPath(url)
