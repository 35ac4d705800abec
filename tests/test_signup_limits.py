"""Signup rate limits live in the database: every web process and every restart counts together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conftest import SmtpSink
from digest import store
from digest.models import SignupLimit
from digest.store import migrate
from digest.web import limits
from test_web import open_site

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
LIMITS = limits.RateLimits(per_minute=5, per_hour=20)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[store.Database]:
    migrate.migrate(database_url)
    database = store.Database(database_url)
    try:
        yield database
    finally:
        await database.close()


async def test_five_a_minute_then_429_until_the_window_ends(db: store.Database) -> None:
    limiter = limits.RateLimiter(LIMITS, "secret-key-0123456789")
    assert [await limiter.check(db, "198.51.100.4", NOW) for _ in range(5)] == [None] * 5
    wait = await limiter.check(db, "198.51.100.4", NOW + timedelta(seconds=10))
    assert wait == pytest.approx(50)
    assert await limiter.check(db, "198.51.100.5", NOW) is None  # another client counts alone
    assert await limiter.check(db, "198.51.100.4", NOW + timedelta(seconds=61)) is None


async def test_the_hourly_window_holds_after_the_minute_windows_start_over(db: store.Database) -> None:
    limiter = limits.RateLimiter(LIMITS, "secret-key-0123456789")
    allowed = 0
    for n in range(40):
        allowed += await limiter.check(db, "198.51.100.4", NOW + timedelta(seconds=61 * n)) is None
    assert allowed == 20


async def test_the_table_holds_no_address_and_finished_windows_are_pruned(db: store.Database) -> None:
    limiter = limits.RateLimiter(LIMITS, "secret-key-0123456789")
    await limiter.check(db, "198.51.100.4", NOW)
    await limiter.check(db, "198.51.100.5", NOW + timedelta(minutes=30))
    async with db.read() as s:
        keys = list((await s.execute(select(SignupLimit.key))).scalars())
    assert len(keys) == 4 and not any("198.51" in k for k in keys)
    assert await limiter.prune(db, NOW + timedelta(minutes=61)) == 2
    async with db.read() as s:
        assert (await s.execute(select(func.count()).select_from(SignupLimit))).scalar_one() == 2


async def test_processes_counting_at_once_never_let_a_sixth_through(
    database_url: str, db: store.Database
) -> None:
    other = store.Database(database_url)  # a second process: its own engines and connections
    try:
        limiter = limits.RateLimiter(LIMITS, "secret-key-0123456789")
        checks = [limiter.check(d, "198.51.100.4", NOW) for d in [db, other] * 10]
        answers = await asyncio.gather(*checks)
    finally:
        await other.close()
    assert sum(a is None for a in answers) == 5


async def test_two_web_apps_share_the_limit_and_a_restart_keeps_it(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    def body(n: int) -> dict[str, object]:
        return {"email": f"r{n}@example.com", "list": ["demo"], "consent": True}

    async with (
        open_site(tmp_path, database_url, smtp_sink, rate_limits=LIMITS) as first,
        open_site(tmp_path, database_url, smtp_sink, rate_limits=LIMITS) as second,
    ):
        assert first.app.db is not second.app.db
        codes = [
            (await (first if n % 2 else second).client.post("/subscribe", json=body(n))).status_code
            for n in range(6)
        ]
        assert codes == [202] * 5 + [429]
        assert (await first.client.post("/subscribe", json=body(7))).status_code == 429
    async with open_site(tmp_path, database_url, smtp_sink, rate_limits=LIMITS) as restarted:
        answer = await restarted.client.post("/subscribe", json=body(8))
        assert answer.status_code == 429 and int(answer.headers["retry-after"]) >= 1
        assert await restarted.sub("r8@example.com") is None
