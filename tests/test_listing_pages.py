"""Listings, exports and raw-bounce trimming read a page at a time, never every row at once.

Counted, not timed: each test counts the rows the ORM loads (or the columns a statement reads)
while the real function runs, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from conftest import write_config
from digest import bootstrap, readers, readers_io, store
from digest.config import load_config
from digest.models import INBOUND_EVENTS, Event, Subscription
from digest.store import inbound as inbound_store
from digest.store import migrate
from digest.store import readers as readers_store

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
READERS = 30


@pytest.fixture
async def app(tmp_path: Path, database_url: str) -> AsyncIterator[bootstrap.App]:
    cfg = load_config(write_config(tmp_path, database_url=database_url, smtp_port=2525), environ={})
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    opened = await bootstrap.open_app(cfg)
    lst = await bootstrap.get_list(opened, "demo")
    async with opened.db.write() as s:
        for i in range(READERS):
            await readers.add_subscription(
                s, lst, f"reader{i:02d}@example.com", readers.ReaderPrefs(), confirmed=i % 2 == 0, now=NOW
            )
    try:
        yield opened
    finally:
        await opened.db.close()


@pytest.fixture
def loaded() -> Iterator[list[int]]:
    """How many Subscription rows the ORM has loaded so far (one item per row)."""
    rows: list[int] = []

    def count(target: Subscription, _context: Any) -> None:
        rows.append(target.id)

    event.listen(Subscription, "load", count)
    yield rows
    event.remove(Subscription, "load", count)


async def test_an_api_page_loads_only_its_rows_and_counts_the_rest(
    app: bootstrap.App, loaded: list[int]
) -> None:
    rows, total = await readers_io.export_page(app, None, None, 5, 10)
    assert [r["email"] for r in rows] == [f"reader{i:02d}@example.com" for i in range(10, 15)]
    assert total == READERS and len(loaded) == 5
    confirmed, total = await readers_io.export_page(app, None, "confirmed", 100, 0)
    assert total == len(confirmed) == READERS // 2
    assert {r["status"] for r in confirmed} == {"confirmed"}


async def test_an_export_streams_page_by_page_in_address_order(app: bootstrap.App, loaded: list[int]) -> None:
    stream = readers_io.stream_export_rows(app, None, page=7)
    first = await anext(stream)
    assert first["email"] == "reader00@example.com" and len(loaded) == 7
    rest = [row async for row in stream]
    assert [r["email"] for r in [first, *rest]] == [f"reader{i:02d}@example.com" for i in range(READERS)]
    assert len(loaded) == READERS


async def test_trimming_raw_bounces_never_loads_the_raw_messages(app: bootstrap.App) -> None:
    async with app.db.write() as s:
        reader = await readers_store.subscriber_by_email(s, "reader00@example.com")
        assert reader is not None
        for i in range(12):
            await readers_store.add_event(
                s, "bounced", NOW, subscriber_id=reader.id, code=550, raw="x" * 65536, n=i
            )
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        statements.append(sql)

    event.listen(app.db.writer.sync_engine, "before_cursor_execute", record)
    try:
        async with app.db.write() as s:
            assert await inbound_store.trim_raw_batch(s, INBOUND_EVENTS, NOW + timedelta(days=31), 5) == 5
            assert await inbound_store.trim_event_raw(s, INBOUND_EVENTS, NOW + timedelta(days=31)) == 7
    finally:
        event.remove(app.db.writer.sync_engine, "before_cursor_execute", record)
    columns_read = [sql.split("FROM")[0] for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    assert columns_read and not any("detail" in columns for columns in columns_read)
    async with app.db.read() as s:
        details = (await s.execute(select(Event.detail).where(Event.kind == "bounced"))).scalars().all()
    assert len(details) == 12
    assert all("raw" not in d and d["raw_trimmed"] is True and d["code"] == 550 for d in details)
