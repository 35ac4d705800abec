"""Scheduling and exactly-once composition with real components: SQLite and PostgreSQL, a real SMTP
server, and an explicit clock (`compose_due` + `deliver`, as `digest tick --once --now` runs them)."""

from __future__ import annotations

import asyncio
import collections
import email
import email.policy
import hashlib
import http.server
import itertools
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from conftest import SmtpSink, free_port, write_config
from digest import bootstrap, compose, delivery, preferences, readers, scheduler, store
from digest.config import load_config
from digest.models import Delivery, Edition, Event, NewArticle, Subscription
from digest.store import migrate
from digest.store import readers as readers_store
from digest.store import sources as sources_store

BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")
START = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)

LIST = (
    '[[lists]]\nslug = "demo"\nname = "Demo Digest"\nsources = ["seeds"]\n'
    'schedule = "0 7 * * *"\ntimezone = "UTC"\nmin_articles = 1\nmax_articles = 3\nmax_age = "30d"\n'
)


def local(day: date, tz: ZoneInfo, hour: int = 7, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tz).astimezone(UTC)


async def open_project(
    directory: Path, url: str, smtp_port: int | None, *, lists: str = LIST, extra: str = ""
) -> bootstrap.App:
    path = write_config(directory, database_url=url, smtp_port=smtp_port, lists=lists, extra=extra)
    for seed in (directory / "seeds").iterdir():
        seed.unlink()  # every article here is written by the test, with a known date
    cfg = load_config(path, environ={})
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    return await bootstrap.open_app(cfg)


@pytest.fixture
async def project(tmp_path: Path, database_url: str, smtp_sink: SmtpSink) -> AsyncIterator[bootstrap.App]:
    app = await open_project(tmp_path, database_url, smtp_sink.port)
    try:
        yield app
    finally:
        await app.db.close()


async def story(
    app: bootstrap.App, title: str, now: datetime, *, published: datetime | None = None, source: str = "seeds"
) -> None:
    """One article, as a fetcher would hand it to the store."""
    slug = hashlib.sha256(title.encode()).hexdigest()[:12]
    item = NewArticle(
        guid=f"{source}:{slug}",
        url=f"https://news.example.com/{slug}",
        title=title,
        author=None,
        published_at=published or now,
        summary=f"{title}. Something happened.",
        content_html=f"<p>{title}</p>",
        image_url=None,
        fingerprint=slug,
        identity_url=f"https://news.example.com/{slug}",
    )
    async with app.db.write() as s:
        src = await sources_store.source_by_name(s, source)
        assert src is not None
        await sources_store.store_articles(s, src.id, [item], now)


async def reader(
    app: bootstrap.App,
    address: str,
    now: datetime,
    *,
    cadence: str = "default",
    hour: int | None = None,
    tz: str | None = None,
    weekday: int | None = None,
    slug: str = "demo",
) -> str:
    """A confirmed reader; returns their preferences token."""
    lst = await bootstrap.get_list(app, slug)
    prefs = readers.ReaderPrefs(cadence=cadence, send_hour=hour, timezone=tz, weekday=weekday)
    async with app.db.write() as s:
        added = await readers.add_subscription(s, lst, address, prefs, confirmed=True, now=now)
        sub = await s.get(Subscription, added.subscription_id)
        assert sub is not None
        return sub.token


async def tick(app: bootstrap.App, at: datetime) -> list[compose.ComposeReport]:
    """`digest tick --once --now AT`: compose what is due, then deliver until nothing is pending."""
    reports = await compose.compose_due(app, at)
    await delivery.deliver_due(app, lambda: at)
    return reports


def bodies(sink: SmtpSink, address: str) -> list[str]:
    """The plain-text part of every message one address received, in order."""
    out = []
    for m in sink.to(address):
        msg = email.message_from_bytes(m.data, policy=email.policy.default)
        part = msg.get_body(("plain",))
        assert part is not None
        out.append(part.get_content())
    return out


async def deliveries_of(app: bootstrap.App, address: str) -> list[Delivery]:
    async with app.db.read() as s:
        stmt = select(Delivery).where(Delivery.address == address).order_by(Delivery.id)
        return list((await s.execute(stmt)).scalars().all())


async def subscription(app: bootstrap.App, token: str) -> Subscription:
    async with app.db.read() as s:
        sub = await readers_store.subscription_by_token(s, token)
    assert sub is not None
    return sub


# ---------------------------------------------------------------- local hours across DST


@pytest.mark.parametrize(
    ("first_day", "days"),
    [
        pytest.param(date(2027, 3, 12), 19, id="march-changes"),  # US 2027-03-14, EU 2027-03-28
        pytest.param(date(2027, 10, 29), 12, id="autumn-changes"),  # EU 2027-10-31, US 2027-11-07
    ],
)
async def test_two_readers_get_their_digest_at_their_own_local_hour_across_dst_changes(
    project: bootstrap.App, smtp_sink: SmtpSink, first_day: date, days: int
) -> None:
    begin = datetime.combine(first_day - timedelta(days=1), time(12), UTC)
    await reader(project, "ann@example.com", begin, cadence="daily", hour=7, tz="Europe/Berlin")
    await reader(project, "bob@example.com", begin, cadence="daily", hour=7, tz="America/New_York")
    got = {"ann@example.com": 0, "bob@example.com": 0}
    offsets: dict[str, set[timedelta]] = {"ann@example.com": set(), "bob@example.com": set()}
    for n in range(days):
        day = first_day + timedelta(days=n)
        await story(project, f"Story of {day}", datetime.combine(day, time(0, 30), UTC))
        ticks = sorted(
            (local(day, tz) + delta, address)
            for address, tz in (("ann@example.com", BERLIN), ("bob@example.com", NEW_YORK))
            for delta in (timedelta(minutes=-1), timedelta(minutes=1))
        )
        for at, address in ticks:
            await tick(project, at)
            expected = dict(got)
            if at.astimezone(BERLIN if address.startswith("ann") else NEW_YORK).minute == 1:
                expected[address] += 1
            now_got = {a: len(smtp_sink.to(a)) for a in got}
            assert now_got == expected, f"after the tick at {at.isoformat()} ({day})"
            got = now_got
        for address in got:
            last = (await deliveries_of(project, address))[-1]
            assert last.status == "sent"
            tz = BERLIN if address.startswith("ann") else NEW_YORK
            assert last.created_at.astimezone(tz).time() == time(7, 1), (address, last.created_at)
            offsets[address].add(last.created_at.astimezone(tz).utcoffset() or timedelta())
    assert got == {"ann@example.com": days, "bob@example.com": days}
    # Both sides of each change were crossed: two UTC offsets each, at 07:00 local on both.
    assert all(len(o) == 2 for o in offsets.values()), offsets


async def test_the_cli_tick_sends_at_the_local_hour_after_the_spring_change(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    app = await open_project(tmp_path, f"sqlite:///{tmp_path}/digest.db", smtp_sink.port)
    try:
        await story(app, "A story before the change", START)
        await reader(app, "ann@example.com", START, cadence="daily", hour=7, tz="Europe/Berlin")
    finally:
        await app.db.close()
    config = tmp_path / "digest.toml"

    def cli_tick(at: datetime) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "digest", "--config", str(config), "tick", "--once", "--now", at.isoformat()],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    # 2027-03-29 07:00 Berlin is 05:00 UTC (summer time since the day before).
    cli_tick(datetime(2027, 3, 29, 4, 59, tzinfo=UTC))
    assert smtp_sink.to("ann@example.com") == []
    cli_tick(datetime(2027, 3, 29, 5, 1, tzinfo=UTC))
    assert len(smtp_sink.to("ann@example.com")) == 1


# ---------------------------------------------------------------- exactly once


async def test_a_repeated_tick_composes_nothing_twice(project: bootstrap.App, smtp_sink: SmtpSink) -> None:
    await story(project, "Only story", START)
    for i in range(5):
        await reader(project, f"r{i}@example.com", START)
    at = datetime(2027, 3, 11, 7, 1, tzinfo=UTC)
    first = await tick(project, at)
    again = await asyncio.gather(*(tick(project, at) for _ in range(3)))
    later = await tick(project, at + timedelta(minutes=5))
    assert sum(r.deliveries for r in first) == 5
    assert sum(r.deliveries for reports in [*again, later] for r in reports) == 0
    assert all(len(smtp_sink.to(f"r{i}@example.com")) == 1 for i in range(5))


async def test_a_slot_missed_by_less_than_catch_up_is_sent_once_on_the_next_tick(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    await story(project, "Story while down", START)
    await reader(project, "ann@example.com", START)
    # The 07:00 slot of 2027-03-11 was missed; the service comes back 11h later.
    await tick(project, datetime(2027, 3, 11, 18, 0, tzinfo=UTC))
    await tick(project, datetime(2027, 3, 11, 18, 1, tzinfo=UTC))
    assert len(smtp_sink.to("ann@example.com")) == 1
    await story(project, "Next morning story", datetime(2027, 3, 11, 20, 0, tzinfo=UTC))
    await tick(project, datetime(2027, 3, 12, 7, 0, tzinfo=UTC))
    assert len(smtp_sink.to("ann@example.com")) == 2  # the next slot is the usual one


async def test_a_slot_missed_by_more_than_catch_up_waits_for_the_next_slot_and_is_never_sent_per_missed_slot(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    await story(project, "Story while down", START)
    await reader(project, "ann@example.com", START)
    # Down from before 2027-03-11 07:00 until 2027-03-13 20:00: three slots missed, the last by 13h.
    back = datetime(2027, 3, 13, 20, 0, tzinfo=UTC)
    await tick(project, back)
    assert smtp_sink.to("ann@example.com") == []
    sub = (await deliveries_of(project, "ann@example.com"), await _only_subscription(project))
    assert sub[0] == [] and sub[1].next_due_at == datetime(2027, 3, 14, 7, 0, tzinfo=UTC)
    await tick(project, datetime(2027, 3, 14, 7, 0, tzinfo=UTC))
    await tick(project, datetime(2027, 3, 14, 7, 1, tzinfo=UTC))
    assert len(smtp_sink.to("ann@example.com")) == 1


async def _only_subscription(app: bootstrap.App) -> Subscription:
    async with app.db.read() as s:
        return (await s.execute(select(Subscription))).scalar_one()


async def test_nothing_new_records_a_skipped_event_and_schedules_the_next_slot(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    await story(project, "First story", START)
    token = await reader(project, "ann@example.com", START)
    await tick(project, datetime(2027, 3, 11, 7, 0, tzinfo=UTC))
    reports = await tick(project, datetime(2027, 3, 12, 7, 0, tzinfo=UTC))
    assert sum(r.skipped for r in reports) == 1
    assert len(smtp_sink.to("ann@example.com")) == 1
    sub = await subscription(project, token)
    assert sub.next_due_at == datetime(2027, 3, 13, 7, 0, tzinfo=UTC)
    async with project.db.read() as s:
        skips = (await s.execute(select(Event).where(Event.kind == "skipped"))).scalars().all()
    assert [e.subscription_id for e in skips] == [sub.id]
    assert skips[0].detail["next_due_at"] == "2027-03-13T07:00:00+00:00"
    await story(project, "Second story", datetime(2027, 3, 12, 12, 0, tzinfo=UTC))
    await tick(project, datetime(2027, 3, 13, 7, 0, tzinfo=UTC))
    assert len(smtp_sink.to("ann@example.com")) == 2
    assert "Second story" in bodies(smtp_sink, "ann@example.com")[1]


async def test_below_min_articles_nothing_is_sent_and_the_articles_wait_for_the_next_slot(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    lists = LIST.replace("min_articles = 1", "min_articles = 2")
    app = await open_project(tmp_path, database_url, smtp_sink.port, lists=lists)
    try:
        await story(app, "Lonely story", START)
        await reader(app, "ann@example.com", START)
        reports = await tick(app, datetime(2027, 3, 11, 7, 0, tzinfo=UTC))
        assert sum(r.skipped for r in reports) == 1 and smtp_sink.to("ann@example.com") == []
        await story(app, "Companion story", datetime(2027, 3, 11, 9, 0, tzinfo=UTC))
        await tick(app, datetime(2027, 3, 12, 7, 0, tzinfo=UTC))
        [text] = bodies(smtp_sink, "ann@example.com")
        assert "Lonely story" in text and "Companion story" in text
    finally:
        await app.db.close()


# ---------------------------------------------------------------- selection


async def test_a_new_readers_first_digest_holds_the_newest_max_articles_and_says_how_many_more(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    for n in range(7):
        await story(project, f"Archive story {n}", START, published=START - timedelta(hours=10 - n))
    await reader(project, "ann@example.com", START)
    await tick(project, datetime(2027, 3, 11, 7, 0, tzinfo=UTC))
    [text] = bodies(smtp_sink, "ann@example.com")
    assert [n for n in range(7) if f"Archive story {n}" in text] == [4, 5, 6]
    assert "4 more" in text
    async with project.db.read() as s:
        edition = (await s.execute(select(Edition))).scalar_one()
    assert edition.more_count == 4 and len(edition.article_ids) == 3
    # The four left out are not carried into the next digest.
    await story(project, "Fresh story", datetime(2027, 3, 11, 9, 0, tzinfo=UTC))
    await tick(project, datetime(2027, 3, 12, 7, 0, tzinfo=UTC))
    second = bodies(smtp_sink, "ann@example.com")[1]
    assert (
        "Fresh story" in second
        and "Archive story" not in second
        and "more" not in second.lower().split("fresh story")[0]
    )


async def test_max_age_leaves_out_old_articles(project: bootstrap.App, smtp_sink: SmtpSink) -> None:
    await story(project, "Stale story", START, published=START - timedelta(days=31))
    await story(project, "Recent story", START, published=START - timedelta(days=29))
    await reader(project, "ann@example.com", START)
    await tick(project, datetime(2027, 3, 11, 7, 0, tzinfo=UTC))
    [text] = bodies(smtp_sink, "ann@example.com")
    assert "Recent story" in text and "Stale story" not in text


async def test_an_article_seen_in_two_sources_reaches_a_list_once(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    wire = tmp_path / "wire"
    wire.mkdir()
    extra = f'\n[[sources]]\nname = "wire"\nkind = "directory"\npath = "{wire}"\n'
    lists = LIST.replace('sources = ["seeds"]', 'sources = ["seeds", "wire"]') + (
        '[[lists]]\nslug = "wire-only"\nname = "Wire"\nsources = ["wire"]\nschedule = "0 7 * * *"\n'
        'timezone = "UTC"\nmax_age = "30d"\n'
    )
    app = await open_project(tmp_path, database_url, smtp_sink.port, lists=lists, extra=extra)
    try:
        await reader(app, "ann@example.com", START)
        await reader(app, "ann@example.com", START, slug="wire-only")
        await story(app, "Shared story", START, source="seeds")
        await tick(app, datetime(2027, 3, 11, 7, 0, tzinfo=UTC))
        # The wire carries the same story a day later (and nothing else).
        await story(app, "Shared story", datetime(2027, 3, 11, 12, 0, tzinfo=UTC), source="wire")
        await tick(app, datetime(2027, 3, 12, 7, 0, tzinfo=UTC))
        texts = bodies(smtp_sink, "ann@example.com")
        # Once from demo (first sighting in seeds), once from wire-only (which draws only from wire).
        assert len(texts) == 2 and all("Shared story" in t for t in texts)
        demo = [d for d in await deliveries_of(app, "ann@example.com") if d.to_seq == 1]
        assert len(demo) == 1
    finally:
        await app.db.close()


# ---------------------------------------------------------------- changing the schedule


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(("daily", 7, "Europe/Berlin"), ("daily", 20, "Europe/Berlin"), id="later-hour"),
        pytest.param(("daily", 7, "America/New_York"), ("daily", 9, "Europe/Berlin"), id="zone-east"),
        pytest.param(("daily", 7, "Europe/Berlin"), ("daily", 9, "America/New_York"), id="zone-west"),
        pytest.param(("default", None, None), ("daily", 22, "Pacific/Auckland"), id="default-to-daily"),
        pytest.param(("daily", 7, "Europe/Berlin"), ("weekly", 18, "Europe/Berlin"), id="to-weekly"),
    ],
)
async def test_changing_cadence_hour_or_zone_never_gives_a_second_digest_the_same_local_day(
    tmp_path: Path,
    database_url: str,
    smtp_sink: SmtpSink,
    before: tuple[str, int | None, str | None],
    after: tuple[str, int | None, str | None],
) -> None:
    lists = LIST.replace("max_articles = 3", "max_articles = 50")
    project = await open_project(tmp_path, database_url, smtp_sink.port, lists=lists)
    try:
        await _change_schedule_run(project, smtp_sink, before, after)
    finally:
        await project.db.close()


async def _change_schedule_run(
    project: bootstrap.App,
    smtp_sink: SmtpSink,
    before: tuple[str, int | None, str | None],
    after: tuple[str, int | None, str | None],
) -> None:
    token = await reader(project, "ann@example.com", START, cadence=before[0], hour=before[1], tz=before[2])
    titles: list[tuple[str, datetime]] = []
    at = START
    changed_at = None
    for hour in range(0, 24 * 8, 2):  # a tick every two hours: late by at most 2h, within catch_up
        at = START + timedelta(hours=hour)
        if hour % 6 == 0:
            titles.append((f"Hourly story {hour:03d}", at))
            await story(project, titles[-1][0], at)
        if hour == 24 * 3:
            # Change the schedule right after the day's digest went out.
            weekday = at.astimezone(ZoneInfo(after[2] or "UTC")).weekday() if after[0] == "weekly" else None
            prefs = readers.ReaderPrefs(
                cadence=after[0], send_hour=after[1], timezone=after[2], weekday=weekday
            )
            outcome = await preferences.change_preferences(
                project, token, ["demo"], prefs, at, consent=readers.Consent()
            )
            assert outcome is not None and outcome.changed == ["demo"]
            changed_at = at
        await tick(project, at)
    assert changed_at is not None
    sent = [d for d in await deliveries_of(project, "ann@example.com") if d.status == "sent"]
    zone_after = ZoneInfo(after[2] or "UTC")
    days = [d.created_at.astimezone(zone_after).date() for d in sent]
    assert len(days) == len(set(days)), f"two digests on one local day: {days}"
    # Neither drops nor repeats an article: the seq ranges tile (0, last watermark].
    ranges = [(d.from_seq, d.to_seq) for d in sent]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges)), ranges
    texts = bodies(smtp_sink, "ann@example.com")
    last = sent[-1].created_at
    for t, at in titles:
        if at <= last:  # later ones wait for the next slot
            assert sum(t in text for text in texts) == 1, t


# ---------------------------------------------------------------- failures (bug found here)


async def test_articles_of_a_failed_digest_reach_the_reader_even_when_nothing_new_arrived(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    """A digest deferred past the delivery lifetime fails and rolls the watermark back; the next
    compose covers the same seq range again, so its delivery must not collide with the failed row."""
    failing = True
    smtp_sink.reply_for = lambda address, attempt: "451 4.3.0 mailbox busy" if failing else None
    await story(project, "Story that must arrive", START)
    token = await reader(project, "ann@example.com", START)
    t = datetime(2027, 3, 11, 7, 0, tzinfo=UTC)
    await tick(project, t)
    # Retried for the whole lifetime (48h), then failed: the watermark goes back to 0.
    for hours in range(1, 60, 4):
        await delivery.deliver_due(project, lambda h=hours: t + timedelta(hours=h))
    [failed] = await deliveries_of(project, "ann@example.com")
    assert failed.status == "failed"
    assert (await subscription(project, token)).watermark == 0
    failing = False
    await tick(project, datetime(2027, 3, 14, 7, 0, tzinfo=UTC))  # missed by > catch_up: rescheduled
    await tick(project, datetime(2027, 3, 15, 7, 0, tzinfo=UTC))
    sub = await subscription(project, token)
    texts = bodies(smtp_sink, "ann@example.com")
    assert sub.watermark == 0 or len(texts) == 1, (
        f"watermark advanced to {sub.watermark} but no digest was sent: the articles are lost"
    )
    assert len(texts) == 1 and "Story that must arrive" in texts[0]


# ---------------------------------------------------------------- several schedulers on PostgreSQL


def spawn_tick(config: Path, at: datetime) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "digest", "--config", str(config), "tick", "--once", "--now", at.isoformat()],
        cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_two_scheduler_processes_ticking_together_on_postgres_send_each_digest_once(
    tmp_path: Path, postgres_url: str, smtp_sink: SmtpSink
) -> None:
    readers = [(f"berlin{i}@example.com", "Europe/Berlin") for i in range(15)] + [
        (f"newyork{i}@example.com", "America/New_York") for i in range(15)
    ]

    async def prepare() -> None:
        app = await open_project(tmp_path, postgres_url, smtp_sink.port)
        try:
            for address, tz in readers:
                await reader(
                    app, address, datetime(2027, 3, 26, 12, 0, tzinfo=UTC), cadence="daily", hour=7, tz=tz
                )
        finally:
            await app.db.close()

    async def add_story(title: str, at: datetime) -> None:
        cfg = load_config(tmp_path / "digest.toml", environ={})
        app = await bootstrap.open_app(cfg)
        try:
            await story(app, title, at)
        finally:
            await app.db.close()

    asyncio.run(prepare())
    config = tmp_path / "digest.toml"
    rounds = 0
    for n in range(3):
        day = date(2027, 3, 27) + timedelta(days=n)  # across the EU change on the 28th
        asyncio.run(add_story(f"Story of {day}", datetime.combine(day, time(0, 0), UTC)))
        for tz in (BERLIN, NEW_YORK):
            at = local(day, tz, 7, 1)
            procs = [spawn_tick(config, at) for _ in range(2)]
            outputs = [p.communicate(timeout=180) for p in procs]
            assert all(p.returncode == 0 for p in procs), outputs
            rounds += 1
    per = collections.Counter(r for m in smtp_sink.messages for r in m.rcpt_tos)
    assert set(per) == {a for a, _ in readers}
    assert set(per.values()) == {3}, per  # one digest a day each, never two
    ids = collections.Counter(
        email.message_from_bytes(m.data, policy=email.policy.default)["Message-ID"]
        for m in smtp_sink.messages
    )
    assert max(ids.values()) == 1
    assert rounds == 6


class _CountingFeed(http.server.BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = (
            b'<?xml version="1.0"?><rss version="2.0"><channel><title>Wire</title>'
            b"<link>https://wire.example.com/</link><description>d</description>"
            b"<item><title>Wire item</title><link>https://wire.example.com/1</link>"
            b"<guid>wire-1</guid><pubDate>Wed, 10 Mar 2027 10:00:00 GMT</pubDate>"
            b"<description>Something happened on the wire today.</description></item>"
            b"</channel></rss>"
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/rss+xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def counting_feed() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    handler = type("Handler", (_CountingFeed,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/feed.xml", hits
    finally:
        server.shutdown()
        server.server_close()


async def _two_apps(tmp_path: Path, postgres_url: str, feed: str) -> tuple[bootstrap.App, bootstrap.App]:
    extra = f'\n[[sources]]\nname = "wire"\nkind = "feed"\nurl = "{feed}"\ninterval = "30m"\n'
    first = await open_project(tmp_path, postgres_url, 2525, extra=extra)
    second = await bootstrap.open_app(first.cfg)
    return first, second


async def test_run_exclusive_on_postgres_runs_a_job_once_when_two_callers_race(
    tmp_path: Path, postgres_url: str
) -> None:
    a = await open_project(tmp_path, postgres_url, 2525)
    b = await bootstrap.open_app(a.cfg)
    runs = 0

    async def job() -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.3)

    try:
        ran = await asyncio.gather(
            scheduler.run_exclusive(a, "compose", job), scheduler.run_exclusive(b, "compose", job)
        )
        assert sorted(ran) == [False, True] and runs == 1
        # The lock is released afterwards: the next run goes ahead.
        assert await scheduler.run_exclusive(b, "compose", job) and runs == 2
    finally:
        await a.db.close()
        await b.db.close()


async def test_two_schedulers_on_postgres_racing_fetch_a_feed_once(
    tmp_path: Path, postgres_url: str, counting_feed: tuple[str, list[str]]
) -> None:
    url, hits = counting_feed
    a, b = await _two_apps(tmp_path, postgres_url, url)
    try:
        jobs = [scheduler.build_scheduler(app).get_job("ingest:wire") for app in (a, b)]
        assert all(j is not None for j in jobs)
        assert all(j.name == "ingest:wire" for j in jobs if j is not None)  # logs name the job
        await asyncio.gather(*(j.func() for j in jobs if j is not None))
        assert len(hits) == 1, hits
    finally:
        await a.db.close()
        await b.db.close()


async def test_two_schedulers_on_postgres_fetch_a_feed_once_per_interval_even_when_not_overlapping(
    tmp_path: Path, postgres_url: str, counting_feed: tuple[str, list[str]]
) -> None:
    """Two scheduler processes started a little apart run the same interval job one after the
    other: the advisory lock alone does not stop the second from fetching the feed again."""
    url, hits = counting_feed
    a, b = await _two_apps(tmp_path, postgres_url, url)
    try:
        job_a = scheduler.build_scheduler(a).get_job("ingest:wire")
        job_b = scheduler.build_scheduler(b).get_job("ingest:wire")
        assert job_a is not None and job_b is not None
        await job_a.func()
        await asyncio.sleep(0.2)
        await job_b.func()  # the second process's tick, well within the 30m interval
        assert len(hits) == 1, f"the feed was fetched {len(hits)} times in one interval"
    finally:
        await a.db.close()
        await b.db.close()
