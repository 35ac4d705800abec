"""Signup rate-limit windows: one row per client and window length, counted atomically."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import case, delete, literal
from sqlalchemy.ext.asyncio import AsyncSession

from digest.models import SignupLimit, UTCDateTime
from digest.store import dialect_insert


async def count_hit(
    session: AsyncSession, key: str, length: timedelta, now: datetime
) -> tuple[int, datetime]:
    """The hits in `key`'s current window, this one included, and when that window began.

    One upsert: two processes counting the same client at once each see the other's hit, on
    SQLite (one writer at a time) and on PostgreSQL (the row lock of ON CONFLICT DO UPDATE).
    A window older than `length` starts over at this hit."""
    table = SignupLimit.__table__
    at = literal(now, UTCDateTime())
    current = table.c.window_start > literal(now - length, UTCDateTime())
    stmt = (
        dialect_insert(session, table)
        .values(key=key, window_start=now, hits=1)
        .on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "hits": case((current, table.c.hits + 1), else_=1),
                "window_start": case((current, table.c.window_start), else_=at),
            },
        )
        .returning(table.c.hits, table.c.window_start)
    )
    hits, start = (await session.execute(stmt)).one()
    return int(hits), start


async def delete_windows_before(session: AsyncSession, cutoff: datetime) -> int:
    """Forget windows that began before `cutoff` (none is longer than that)."""
    result = await session.execute(delete(SignupLimit).where(SignupLimit.window_start < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
