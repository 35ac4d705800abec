"""`digest prune` on a year of synthetic history (SQLite and PostgreSQL): the right rows go, the rest stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text

from conftest import write_config
from digest import bootstrap, retention, store
from digest.config import load_config
from digest.models import Delivery, Edition, Event, Subscriber
from digest.store import ledger, migrate

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
RETENTION = (
    '\n[retention]\ndeliveries = "180d"\nevents = "180d"\nraw_bounces = "30d"\nedition_bodies = "90d"\n'
    "batch_size = 500\n"
)


async def make_history(app: bootstrap.App, days: int = 365, readers: int = 40) -> None:
    """One edition a day to every reader, a bounce with its raw message and an unsubscribe a day."""
    lst = await bootstrap.get_list(app, "demo")
    async with app.db.write() as s:
        await s.execute(
            insert(Subscriber),
            [
                {"email": f"r{i}@example.com", "email_key": f"r{i}@example.com", "name": "", "status": "active",
                 "bounce_score": 0.0, "created_at": NOW - timedelta(days=days), "updated_at": NOW}
                for i in range(readers)
            ],
        )  # fmt: skip
        first_reader = (await s.execute(select(func.min(Subscriber.id)))).scalar_one()
    for day in range(days, 0, -1):
        when = NOW - timedelta(days=day)
        async with app.db.write() as s:
            edition = await ledger.add_edition(
                s,
                Edition(list_id=lst.id, kind="digest", article_ids=[], more_count=0, subject=f"day {day}",
                        html="<p>" + "x" * 2000 + "</p>", text="x" * 1000, created_at=when, status="done"),
            )  # fmt: skip
            rows: list[dict[str, Any]] = [
                {"kind": "digest", "edition_id": edition.id, "address": f"r{i}@example.com",
                 "status": "sent" if i else "failed", "attempts": 1, "next_attempt_at": when,
                 "message_id": f"<{day}.{i}@example.com>", "created_at": when, "updated_at": when,
                 "sent_at": when if i else None, "smtp_code": 250 if i else 550}
                for i in range(readers)
            ]  # fmt: skip
            await s.execute(insert(Delivery), rows)
            failed = (
                await s.execute(select(Delivery.id).where(Delivery.message_id == f"<{day}.0@example.com>"))
            ).scalar_one()
            await s.execute(
                insert(Event),
                [
                    {"subscriber_id": first_reader, "delivery_id": failed, "kind": "bounced", "created_at": when,
                     "detail": {"bounce_class": "hard", "raw": "Received: ...\n" + "y" * 500}},
                    {"subscriber_id": first_reader + 1, "kind": "unsubscribed", "created_at": when,
                     "detail": {"method": "link"}},
                    {"subscriber_id": first_reader + 2, "delivery_id": failed, "kind": "suppressed",
                     "created_at": when, "detail": {"reason": "hard bounce"}},
                ],
            )  # fmt: skip
    async with app.db.write() as s:  # one message stuck in the queue since long ago is never pruned
        await s.execute(
            insert(Delivery),
            [{"kind": "digest", "address": "late@example.com", "status": "deferred", "attempts": 3,
              "next_attempt_at": NOW, "message_id": "<stuck@example.com>", "created_at": NOW - timedelta(days=300),
              "updated_at": NOW}],
        )  # fmt: skip


async def open_project(tmp_path: Path, database_url: str) -> bootstrap.App:
    path = write_config(tmp_path, database_url=database_url, smtp_port=2525, extra=RETENTION)
    cfg = load_config(path)
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    return await bootstrap.open_app(cfg)


async def count(app: bootstrap.App, stmt: Any) -> int:
    async with app.db.read() as s:
        return int((await s.execute(stmt)).scalar_one())


async def test_prune_deletes_what_is_past_retention_and_keeps_the_rest(
    tmp_path: Path, database_url: str
) -> None:
    app = await open_project(tmp_path, database_url)
    try:
        await make_history(app)
        cut180, cut90, cut30 = (NOW - timedelta(days=d) for d in (180, 90, 30))
        recent_deliveries = await count(app, select(func.count()).where(Delivery.created_at >= cut180))
        report = await retention.prune(app, NOW)

        assert (
            await count(
                app, select(func.count()).where(Delivery.created_at < cut180, Delivery.status != "deferred")
            )
            == 0
        )
        assert await count(app, select(func.count()).where(Delivery.status == "deferred")) == 1
        assert await count(app, select(func.count()).select_from(Delivery)) == recent_deliveries + 1
        assert report.deleted_deliveries == 185 * 40 and report.batches > 10

        old_events = select(func.count()).where(Event.created_at < cut180)
        assert await count(app, old_events.where(Event.kind != "suppressed")) == 0
        assert await count(app, old_events.where(Event.kind == "suppressed")) == 185
        assert (
            await count(
                app, select(func.count()).where(Event.created_at < cut180, Event.delivery_id.is_not(None))
            )
            == 0
        )
        assert await count(app, select(func.count()).where(Event.created_at >= cut180)) == 180 * 3

        raw = Event.detail["raw"].as_string().is_not(None)
        assert (
            await count(
                app, select(func.count()).where(Event.kind == "bounced", raw, Event.created_at < cut30)
            )
            == 0
        )
        assert await count(app, select(func.count()).where(Event.kind == "bounced", raw)) == 30

        assert (
            await count(
                app,
                select(func.count()).where(Edition.created_at < cut90, Edition.html != retention.PRUNED_BODY),
            )
            == 0
        )
        assert (
            await count(app, select(func.count()).where(Edition.created_at >= cut90, Edition.text != ""))
            == 90
        )

        again = await retention.prune(app, NOW)
        assert not any(again.counts().values())
        if app.db.is_sqlite:
            async with app.db.write() as s:
                assert (await s.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
    finally:
        await app.db.close()
