"""The delivery hot path's one write: "these messages went out", on a driver connection of its own.

The outcome writer commits what every connection just sent before the connection may send again,
so this statement is on the critical path of every message. An ORM session per group costs a
SELECT of the held rows, a statement built per call, an executemany and a COMMIT, each a thread
hop on aiosqlite. Here it is one statement that updates only the rows this worker still holds and
returns them, in one round trip:

- PostgreSQL: `UPDATE … FROM unnest(…)` on an autocommit psycopg connection;
- SQLite: `UPDATE … FROM json_each(?)` between `BEGIN IMMEDIATE` and `COMMIT`, all in one call
  to a thread that owns a plain sqlite3 connection.

Any other outcome (failed, deferred, unknown, skipped) has side effects (events, watermarks,
suppression) and goes through the ORM path in ledger.finish_deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.exc import OperationalError


@dataclass(frozen=True)
class Sent:
    """One message the relay accepted."""

    delivery_id: int
    attempts: int  # the new count, this attempt included
    code: int | None
    reply: str | None
    relay: str | None
    at: datetime


class SentRecorder(Protocol):
    async def record_sent(self, owner: str, sent: Sequence[Sent]) -> set[int]:
        """Mark `sent` as sent where `owner` still holds the lease; returns the ids it did not hold."""
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


class SqliteSentRecorder:
    """A plain sqlite3 connection used from one worker thread at a time, one call per group."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _record(self, owner: str, payload: str, ids: list[int]) -> set[int]:
        with self.lock:
            if self.conn is None:
                self.conn = self._connect()
            conn = self.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                held = {int(r[0]) for r in conn.execute(_SQLITE_SENT, (payload, owner)).fetchall()}
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    # The same outage type the ORM path raises ("database is locked"), so the
                    # writer waits it out the same way.
                    raise OperationalError(_SQLITE_SENT, None, exc) from exc
                raise
        return set(ids) - held

    async def record_sent(self, owner: str, sent: Sequence[Sent]) -> set[int]:
        ordered = sorted(sent, key=lambda s: s.delivery_id)  # one lock order for every worker
        payload = json.dumps(
            [[s.delivery_id, s.attempts, s.code, s.reply, s.relay, _sqlite_time(s.at)] for s in ordered]
        )
        return await asyncio.to_thread(self._record, owner, payload, [s.delivery_id for s in ordered])

    async def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None


class PostgresSentRecorder:
    """An autocommit psycopg connection: the UPDATE is its own transaction, one round trip."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None

    async def record_sent(self, owner: str, sent: Sequence[Sent]) -> set[int]:
        import psycopg

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
        try:
            if self.conn is None or self.conn.closed:
                self.conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            cur = await self.conn.execute(_POSTGRES_SENT, params, prepare=True)
            held = {int(r[0]) for r in await cur.fetchall()}
        except psycopg.OperationalError as exc:
            await self.close()  # a broken connection is opened again on the next group
            raise OperationalError(_POSTGRES_SENT, None, exc) from exc
        return {s.delivery_id for s in ordered} - held

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with contextlib.suppress(Exception):
                await conn.close()


def sent_recorder(url: str) -> SentRecorder | None:
    """The recorder for a plain database URL (`sqlite:///…` or `postgresql://…`); None for an
    in-memory SQLite database, which a second connection would not see."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        return None if path in ("", ":memory:") else SqliteSentRecorder(path)
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    return PostgresSentRecorder(url)
