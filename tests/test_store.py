"""The store and the compose/deliver pipeline on real SQLite and real PostgreSQL."""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conftest import SmtpSink, write_config
from digest import bootstrap, compose, delivery, readers, sources, store
from digest.config import load_config
from digest.errors import SchemaError
from digest.models import ArticleSource, Delivery, Edition, Subscription
from digest.store import compose as compose_store
from digest.store import ledger, migrate
from digest.store import sources as sources_store

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


async def open_project(directory: Path, url: str, smtp_port: int | None, **kw: str) -> bootstrap.App:
    cfg = load_config(write_config(directory, database_url=url, smtp_port=smtp_port, **kw), environ={})
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    return await bootstrap.open_app(cfg)


@pytest.fixture
async def project(tmp_path: Path, database_url: str, smtp_sink: SmtpSink) -> AsyncIterator[bootstrap.App]:
    app = await open_project(tmp_path, database_url, smtp_sink.port)
    try:
        yield app
    finally:
        await app.db.close()


async def add_reader(app: bootstrap.App, address: str, *, confirmed: bool = True) -> None:
    lst = await bootstrap.get_list(app, "demo")
    async with app.db.write() as s:
        await readers.add_subscription(s, lst, address, readers.ReaderPrefs(), confirmed=confirmed, now=NOW)


def write_story(app: bootstrap.App, name: str, title: str) -> None:
    (app.cfg.base_dir / "seeds" / name).write_text(
        f"{title}\n\nSomething happened today. It matters to readers.\n"
    )


async def test_refuses_to_run_on_a_database_without_schema(tmp_path: Path, database_url: str) -> None:
    cfg = load_config(write_config(tmp_path, database_url=database_url, smtp_port=2525), environ={})
    with pytest.raises(SchemaError, match="digest init"):
        await bootstrap.open_app(cfg)


async def test_ingest_twice_stores_each_story_once_with_increasing_seq(project: bootstrap.App) -> None:
    first = await sources.ingest_sources(project, NOW)
    again = await sources.ingest_sources(project, NOW)
    assert first[0].new >= 1 and first[0].error is None
    assert again[0].new == 0
    async with project.db.read() as s:
        seqs = (await s.execute(select(ArticleSource.seq).order_by(ArticleSource.seq))).scalars().all()
    assert seqs == list(range(1, len(seqs) + 1))


async def test_broken_source_records_its_error_and_others_still_ingest(
    tmp_path: Path, database_url: str
) -> None:
    extra = '\n[[sources]]\nname = "broken"\nkind = "feed"\nurl = "http://127.0.0.1:9/feed.xml"\n'
    app = await open_project(tmp_path, database_url, 2525, extra=extra)
    try:
        reports = {r.source: r for r in await sources.ingest_sources(app, NOW)}
        assert reports["broken"].error and "broken" in reports["broken"].error
        assert reports["seeds"].new >= 1
        async with app.db.read() as s:
            src = await sources_store.source_by_name(s, "broken")
        assert src is not None and src.last_error
    finally:
        await app.db.close()


async def test_send_delivers_one_well_formed_digest_and_a_second_send_nothing(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    await sources.ingest_sources(project, NOW)
    await add_reader(project, "ann@example.com")
    lst = await bootstrap.get_list(project, "demo")
    report = await compose.compose(project, lst, NOW, manual=True)
    stats = await delivery.deliver_due(project, lambda: NOW)
    assert (report.deliveries, report.renders, stats.sent) == (1, 1, 1)
    raw = smtp_sink.to("ann@example.com")[0].data
    msg = email.message_from_bytes(raw, policy=email.policy.strict)
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    again = await compose.compose(project, lst, NOW + timedelta(minutes=1), manual=True)
    await delivery.deliver_due(project, lambda: NOW)
    assert again.deliveries == 0
    assert len(smtp_sink.to("ann@example.com")) == 1


async def test_readers_at_one_watermark_share_one_rendered_edition(project: bootstrap.App) -> None:
    await sources.ingest_sources(project, NOW)
    for name in ("ann", "bob", "cy"):
        await add_reader(project, f"{name}@example.com")
    report = await compose.compose(project, await bootstrap.get_list(project, "demo"), NOW, manual=True)
    assert (report.deliveries, report.renders, len(report.editions)) == (3, 1, 1)


async def test_racing_composers_compose_each_reader_once_into_one_edition(project: bootstrap.App) -> None:
    await sources.ingest_sources(project, NOW)
    for i in range(20):
        await add_reader(project, f"reader{i}@example.com")
    lst = await bootstrap.get_list(project, "demo")
    reports = await asyncio.gather(*(compose.compose(project, lst, NOW, manual=True) for _ in range(3)))
    assert sorted(r.deliveries for r in reports) == [0, 0, 20]
    assert [len(r.editions) for r in reports if not r.deliveries] == [0, 0]
    async with project.db.read() as s:
        per_edition = (
            await s.execute(
                select(Edition.id, func.count(Delivery.id))
                .outerjoin(Delivery, Delivery.edition_id == Edition.id)
                .group_by(Edition.id)
            )
        ).all()
    assert [n for _, n in per_edition] == [20]


async def test_only_new_articles_reach_a_reader_in_the_next_digest(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    await sources.ingest_sources(project, NOW)
    await add_reader(project, "ann@example.com")
    lst = await bootstrap.get_list(project, "demo")
    await compose.compose(project, lst, NOW, manual=True)
    await delivery.deliver_due(project, lambda: NOW)
    write_story(project, "zz-new.txt", "A brand new development")
    await sources.ingest_sources(project, NOW + timedelta(hours=1))
    await compose.compose(project, lst, NOW + timedelta(hours=1), manual=True)
    await delivery.deliver_due(project, lambda: NOW + timedelta(hours=1))
    second = email.message_from_bytes(smtp_sink.to("ann@example.com")[1].data, policy=email.policy.default)
    body = second.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "A brand new development" in text
    assert "repatriation" not in text


async def test_unconfirmed_reader_gets_nothing(project: bootstrap.App, smtp_sink: SmtpSink) -> None:
    await sources.ingest_sources(project, NOW)
    await add_reader(project, "pending@example.com", confirmed=False)
    await compose.compose(project, await bootstrap.get_list(project, "demo"), NOW, manual=True)
    await delivery.deliver_due(project, lambda: NOW)
    assert smtp_sink.to("pending@example.com") == []


async def test_unsubscribe_mid_edition_skips_what_was_not_yet_sent(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    await sources.ingest_sources(project, NOW)
    await add_reader(project, "ann@example.com")
    await add_reader(project, "bob@example.com")
    await compose.compose(project, await bootstrap.get_list(project, "demo"), NOW, manual=True)
    async with project.db.write() as s:
        sub = (await s.execute(select(Subscription).order_by(Subscription.id).limit(1))).scalar_one()
        await readers.unsubscribe(s, sub, "link", NOW)
    stats = await delivery.deliver_due(project, lambda: NOW)
    assert smtp_sink.to("ann@example.com") == []
    assert len(smtp_sink.to("bob@example.com")) == 1
    assert stats.sent == 1


async def test_a_dead_workers_lease_expires_and_the_message_goes_out_once(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    await sources.ingest_sources(project, NOW)
    await add_reader(project, "ann@example.com")
    await compose.compose(project, await bootstrap.get_list(project, "demo"), NOW, manual=True)
    async with project.db.write() as s:
        claimed = await ledger.claim_deliveries(s, "dead-worker", NOW, timedelta(seconds=30), 10)
    assert len(claimed) == 1
    early = await delivery.deliver_due(project, lambda: NOW + timedelta(seconds=10))
    assert early.sent == 0  # still leased by the dead worker
    late = await delivery.deliver_due(project, lambda: NOW + timedelta(seconds=31))
    assert late.sent == 1
    async with project.db.read() as s:
        d = (await s.execute(select(Delivery))).scalar_one()
    assert d.status == "sent" and d.attempts == 1


async def test_a_temporary_failure_is_deferred_then_sent_with_the_same_message_id(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    smtp_sink.reply_for = lambda address, attempt: "451 4.3.0 try again later" if attempt == 1 else None
    await sources.ingest_sources(project, NOW)
    await add_reader(project, "ann@example.com")
    await compose.compose(project, await bootstrap.get_list(project, "demo"), NOW, manual=True)
    first = await delivery.deliver_due(project, lambda: NOW)
    assert first.deferred == 1
    later = await delivery.deliver_due(project, lambda: NOW + timedelta(hours=1))
    assert later.sent == 1
    async with project.db.read() as s:
        d = (await s.execute(select(Delivery))).scalar_one()
    msg = email.message_from_bytes(smtp_sink.to("ann@example.com")[0].data, policy=email.policy.default)
    assert msg["Message-ID"] == d.message_id and d.attempts == 2


async def test_a_permanent_failure_gives_the_reader_back_their_articles(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    smtp_sink.reply_for = lambda address, attempt: "550 5.1.1 user unknown" if attempt == 1 else None
    await sources.ingest_sources(project, NOW)
    await add_reader(project, "ann@example.com")
    await compose.compose(project, await bootstrap.get_list(project, "demo"), NOW, manual=True)
    stats = await delivery.deliver_due(project, lambda: NOW)
    assert stats.failed == 1
    async with project.db.read() as s:
        sub = (await s.execute(select(Subscription))).scalar_one()
    assert sub.watermark == 0


async def test_send_test_moves_no_watermark(project: bootstrap.App, smtp_sink: SmtpSink) -> None:
    await sources.ingest_sources(project, NOW)
    await add_reader(project, "ann@example.com")
    lst = await bootstrap.get_list(project, "demo")
    await compose.queue_test(project, lst, "tester@example.org", NOW)
    await delivery.deliver_due(project, lambda: NOW)
    got = email.message_from_bytes(smtp_sink.to("tester@example.org")[0].data, policy=email.policy.default)
    assert str(got["Subject"]).startswith("[Test]")
    assert "/u/test" in str(got["List-Unsubscribe"])
    async with project.db.read() as s:
        assert (await s.execute(select(Subscription.watermark))).scalar_one() == 0


async def test_preview_shows_the_next_digest_and_changes_nothing(project: bootstrap.App) -> None:
    await sources.ingest_sources(project, NOW)
    await add_reader(project, "ann@example.com")
    lst = await bootstrap.get_list(project, "demo")
    draft, rendered = await compose.preview(project, lst, NOW, "ann@example.com")
    assert not draft.empty and "repatriation" in rendered.text
    async with project.db.read() as s:
        assert (await s.execute(select(func.count()).select_from(Delivery))).scalar_one() == 0


async def test_same_story_in_two_sources_reaches_a_list_once(tmp_path: Path, database_url: str) -> None:
    """An exact copy (the same link) in a second source is linked to the stored story."""
    seed = (Path(__file__).resolve().parents[1] / "src" / "digest" / "defaults" / "seeds" / "000_ef3eb6749892e7fe.txt").read_text()
    headline, _, body = seed.partition("\n")
    story = f"---\ntitle: {headline}\nurl: https://wire.example/korea-workers\n---\n{body}"
    shutil.copytree(Path(__file__).resolve().parents[1] / "src" / "digest" / "defaults" / "seeds", tmp_path / "seeds")
    (tmp_path / "seeds" / "000_ef3eb6749892e7fe.txt").unlink()  # the seeds carry the wire copy instead
    (tmp_path / "mirror").mkdir()
    for folder in ("seeds", "mirror"):
        (tmp_path / folder / "wire-copy.md").write_text(story)
    other = tmp_path / "mirror"
    extra = f'\n[[sources]]\nname = "mirror"\nkind = "directory"\npath = "{other}"\n'
    lists = (
        '[[lists]]\nslug = "demo"\nname = "Demo"\nsources = ["seeds", "mirror"]\nmax_age = "3650d"\n'
        '[[lists]]\nslug = "mirror-only"\nname = "Mirror"\nsources = ["mirror"]\nmax_age = "3650d"\n'
    )
    app = await open_project(tmp_path, database_url, 2525, extra=extra, lists=lists)
    try:
        await sources.ingest_sources(app, NOW)
        async with app.db.read() as s:
            demo = await sources_store.list_by_slug(s, "demo")
            mirror = await sources_store.list_by_slug(s, "mirror-only")
            assert demo and mirror
            upto = await compose_store.list_max_seq(s, demo.id)
            both = await compose_store.new_articles_for_list(s, demo.id, 0, upto, NOW - timedelta(days=3650))
            only = await compose_store.new_articles_for_list(
                s, mirror.id, 0, upto, NOW - timedelta(days=3650)
            )
        titles = [c.article.title for c in both]
        assert len(titles) == len(set(titles))
        assert any("repatriation" in c.article.title for c in only)
    finally:
        await app.db.close()


def test_the_schema_check_knows_the_same_newest_revision_as_alembic() -> None:
    from alembic.script import ScriptDirectory

    from digest.store import migrate

    alembic_head = ScriptDirectory.from_config(migrate._alembic_config("sqlite:///:memory:")).get_current_head()
    assert migrate.head_revision() == alembic_head
