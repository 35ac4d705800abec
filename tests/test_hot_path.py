"""The delivery hot path's own statements say what the ORM queries say, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import write_config
from digest import bootstrap, compose, readers, sources, store
from digest.config import load_config
from digest.models import Delivery
from digest.store import hot_path, ledger, migrate

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
async def app(tmp_path: Path, database_url: str) -> AsyncIterator[bootstrap.App]:
    cfg = load_config(write_config(tmp_path, database_url=database_url, smtp_port=2525), environ={})
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    opened = await bootstrap.open_app(cfg)
    await sources.ingest_sources(opened, NOW)
    lst = await bootstrap.get_list(opened, "demo")
    async with opened.db.write() as s:
        for name in ("ann", "bob", "cho"):
            await readers.add_subscription(
                s, lst, f"{name}@example.com", readers.ReaderPrefs(), confirmed=True, now=NOW
            )
    await compose.compose(opened, lst, NOW, manual=True)
    try:
        yield opened
    finally:
        await opened.db.close()


@pytest.fixture
async def fast(app: bootstrap.App) -> AsyncIterator[hot_path.HotPath]:
    connections = hot_path.hot_path(app.db.url)
    assert connections is not None
    yield connections
    await connections.close()


async def test_only_the_lease_holder_records_a_send_and_the_rest_is_reported_lost(
    app: bootstrap.App, fast: hot_path.HotPath
) -> None:
    async with app.db.write() as s:
        ids = await ledger.claim_deliveries(s, "worker-a", NOW, timedelta(minutes=5), 10)
    assert len(ids) == 3
    sent = [hot_path.Sent(i, 1, 250, "2.0.0 queued as ABC", "relay", NOW) for i in ids]
    assert await fast.record_sent("worker-b", sent) == set(ids)
    assert await fast.record_sent("worker-a", sent[:2]) == set()
    assert await fast.record_sent("worker-a", sent[:1]) == {ids[0]}  # already recorded: not held
    async with app.db.read() as s:
        rows = {d.id: d for d in (await s.execute(select(Delivery))).scalars()}
    first = rows[ids[0]]
    assert (first.status, first.attempts, first.smtp_code, first.relay) == ("sent", 1, 250, "relay")
    assert first.sent_at == NOW and first.updated_at == NOW and first.lease_owner is None
    assert rows[ids[2]].status == "sending" and rows[ids[2]].lease_owner == "worker-a"


async def test_the_check_before_sending_reads_what_the_orm_query_reads(
    app: bootstrap.App, fast: hot_path.HotPath
) -> None:
    async with app.db.write() as s:
        ids = await ledger.claim_deliveries(s, "worker-a", NOW, timedelta(minutes=5), 2)
    async with app.db.read() as s:
        everyone = [d.id for d in (await s.execute(select(Delivery))).scalars()]
    for owner in ("worker-a", "worker-b"):
        async with app.db.read() as s:
            expected = await ledger.send_checks(s, owner, [*everyone, 999])
        assert await fast.send_checks(owner, [*everyone, 999]) == expected
    assert sum(c.held for c in (await fast.send_checks("worker-a", everyone)).values()) == len(ids) == 2
