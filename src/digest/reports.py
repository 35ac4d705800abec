"""What operators read about a running service: status, editions, lists, sources, readers, the
admin page and /metrics.

Each report is gathered here once, in one read transaction through the store's named queries,
and returned as typed values; the CLI, the admin page and /metrics only format them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from digest import readers, store
from digest.bootstrap import App
from digest.models import (
    INBOUND_EVENTS,
    Delivery,
    Edition,
    Event,
    MailingList,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)
from digest.store import compose as compose_store
from digest.store import readers as readers_store
from digest.store import reports as reports_store
from digest.store import retention as retention_store
from digest.store import sources as sources_store
from digest.store import topics as topics_store


@dataclass(frozen=True)
class EditionSummary:
    id: int
    list_slug: str
    kind: str
    created_at: datetime
    status: str
    pause_reason: str | None
    subject: str
    deliveries: dict[str, int]  # its messages by delivery status


@dataclass(frozen=True)
class Queue:
    """Mail not yet finished, and how fast mail goes out."""

    depth: int  # pending, sending and deferred deliveries
    oldest_wait: timedelta | None  # how long the oldest due delivery has waited; None when none is due
    sent_last_minute: int

    @property
    def oldest_wait_seconds(self) -> float:
        return max(self.oldest_wait.total_seconds(), 0.0) if self.oldest_wait else 0.0


@dataclass(frozen=True)
class Status:
    editions: list[EditionSummary]
    deliveries: dict[tuple[str, str], int]  # the whole ledger by (kind, status)
    queue: Queue
    sent_last_hour: int


@dataclass(frozen=True)
class Readers:
    """One list's subscriptions by status, and its confirmed readers by cadence."""

    by_status: dict[str, int] = field(default_factory=dict)
    confirmed_by_cadence: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicLine:
    slug: str
    name: str
    description: str
    readers: int  # confirmed readers who get it (those with every topic included)
    articles_last_week: int  # articles published in the last 7 days matched to it


@dataclass(frozen=True)
class ListReport:
    slug: str
    name: str
    schedule: str
    timezone: str
    public: bool
    readers: Readers
    last_edition: EditionSummary | None  # the latest digest; test sends are not the list's editions
    next_due_at: datetime | None  # the earliest next slot of a confirmed reader
    due_within_a_day: int  # confirmed readers due within a day of next_due_at
    topics: tuple[TopicLine, ...] = ()


@dataclass(frozen=True)
class ArticleLine:
    id: int
    title: str
    url: str | None


@dataclass(frozen=True)
class ReplyGroup:
    """Unsuccessful messages of an edition that got the same reply."""

    status: str
    code: int | None
    reply: str
    count: int


@dataclass(frozen=True)
class Recipient:
    address: str
    status: str
    code: int | None
    reply: str | None


@dataclass(frozen=True)
class EditionReport:
    edition: EditionSummary
    articles: list[ArticleLine]
    more: int  # articles left out of the digest
    first_sent_at: datetime | None
    last_sent_at: datetime | None
    sent: int
    errors: list[ReplyGroup]
    recipients: list[Recipient]  # empty unless asked for

    @property
    def rate_per_second(self) -> float | None:
        if self.first_sent_at is None or self.last_sent_at is None:
            return None
        seconds = (self.last_sent_at - self.first_sent_at).total_seconds()
        return self.sent / seconds if seconds > 0 else None


@dataclass(frozen=True)
class SourceState:
    name: str
    kind: str
    location: str
    interval_seconds: int
    last_fetched_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


@dataclass(frozen=True)
class ReaderReport:
    """A reader's record: subscriptions, consent, events and last deliveries."""

    reader: Subscriber
    subscriptions: list[tuple[Subscription, MailingList]]
    events: Sequence[Event]
    deliveries: Sequence[Delivery]


@dataclass(frozen=True)
class ListReaders:
    slug: str
    name: str
    readers: Readers


@dataclass(frozen=True)
class HourlySends:
    hour: datetime  # the start of the hour
    sent: int


@dataclass(frozen=True)
class ReaderEvent:
    at: datetime
    kind: str
    address: str | None  # None once the reader is gone
    detail: str  # the bounce class, the unsubscribe method or the reply, whichever it has


@dataclass(frozen=True)
class AdminOverview:
    """What the admin page shows."""

    now: datetime
    lists: list[ListReaders]  # active lists only
    editions: list[EditionSummary]
    sends_per_hour: list[HourlySends]  # oldest hour first, the current hour last
    events: list[ReaderEvent]  # latest first
    queue: Queue


@dataclass(frozen=True)
class Metrics:
    """Everything /metrics reports."""

    now: datetime
    readers: dict[str, int]  # readers by global status
    subscriptions: dict[str, Readers]  # by list slug, inactive lists included
    deliveries: dict[tuple[str, str], int]  # by (kind, status)
    queue: Queue
    replies: list[tuple[str, int | None, int]]  # (relay, SMTP code, deliveries) in the last hour
    sources: list[SourceState]
    bounces: list[tuple[str, str | None, int]]  # (event kind, bounce class, events) in the last day
    topic_readers: list[tuple[str, str, int]]  # (list, topic, confirmed readers who get it)
    lease_renewal_failures: int  # by every worker since the database was made, written on recovery


async def status(app: App, now: datetime, list_id: int | None = None) -> Status:
    async with app.db.read() as s:
        return Status(
            editions=await _recent_editions(s, list_id, 20),
            deliveries=await reports_store.delivery_counts(s),
            queue=await _queue(s, now),
            sent_last_hour=await reports_store.sent_since(s, now - timedelta(hours=1)),
        )


async def recent_editions(app: App, list_id: int | None, limit: int) -> list[EditionSummary]:
    async with app.db.read() as s:
        return await _recent_editions(s, list_id, limit)


async def edition_report(app: App, edition_id: int, *, recipients: bool) -> EditionReport | None:
    """One edition's articles, deliveries, send span and errors; None when there is no such edition."""
    async with app.db.read() as s:
        found = await reports_store.edition_with_slug(s, edition_id)
        if found is None:
            return None
        e, slug = found
        articles = await compose_store.articles_by_ids(s, list(e.article_ids))
        counts = await retention_store.edition_status_counts(s, edition_id)
        first, last, sent = await reports_store.edition_send_span(s, edition_id)
        errors = await reports_store.edition_reply_groups(s, edition_id)
        who = await reports_store.edition_recipients(s, edition_id) if recipients else []
    return EditionReport(
        edition=_summary(e, slug, counts),
        articles=[ArticleLine(a.id, a.title, a.url) for a in articles],
        more=e.more_count,
        first_sent_at=first,
        last_sent_at=last,
        sent=sent,
        errors=[ReplyGroup(*group) for group in errors],
        recipients=[Recipient(*r) for r in who],
    )


async def list_report(app: App, lst: MailingList) -> ListReport:
    async with app.db.read() as s:
        return await _list_report(s, lst)


async def list_reports(app: App) -> list[ListReport]:
    """Every active list."""
    async with app.db.read() as s:
        return [await _list_report(s, lst) for lst in await sources_store.active_lists(s)]


async def source_states(app: App) -> list[SourceState]:
    """The configured sources with their last fetch; rows of sources since removed from the config
    are left out."""
    async with app.db.read() as s:
        return await _source_states(s, app)


async def reader_report(app: App, address: str) -> ReaderReport | None:
    """None when no reader has this address."""
    _, key = readers.normalize_address(address)
    async with app.db.read() as s:
        reader = await readers_store.subscriber_by_email(s, key)
        if reader is None:
            return None
        return ReaderReport(
            reader=reader,
            subscriptions=await readers_store.subscriptions_of(s, reader.id),
            events=await readers_store.events_of(s, reader.id),
            deliveries=await readers_store.deliveries_to(s, reader.email),
        )


async def admin_overview(app: App, now: datetime, hours: int = 24) -> AdminOverview:
    async with app.db.read() as s:
        lists = await sources_store.active_lists(s)
        by_list = await _readers_by_list(s, None)
        editions = await _recent_editions(s, None, 15)
        sent_times = await reports_store.sent_times_since(s, now - timedelta(hours=hours))
        events = await reports_store.recent_reader_events(s, ["bounced", "complained", "unsubscribed"], 20)
        queue = await _queue(s, now)
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    buckets = [0] * hours
    for t in sent_times:
        i = int((t - start).total_seconds() // 3600)
        if 0 <= i < hours:
            buckets[i] += 1
    return AdminOverview(
        now=now,
        lists=[ListReaders(lst.slug, lst.name, by_list.get(lst.slug, Readers())) for lst in lists],
        editions=editions,
        sends_per_hour=[HourlySends(start + timedelta(hours=i), n) for i, n in enumerate(buckets)],
        events=[
            ReaderEvent(
                t, kind, address, str(d.get("bounce_class") or d.get("method") or d.get("reply") or "")
            )
            for t, kind, d, address in events
        ],
        queue=queue,
    )


async def metrics(app: App, now: datetime) -> Metrics:
    async with app.db.read() as s:
        return Metrics(
            now=now,
            readers=await reports_store.subscriber_status_counts(s),
            subscriptions=await _readers_by_list(s, None),
            deliveries=await reports_store.delivery_counts(s),
            queue=await _queue(s, now),
            replies=await reports_store.smtp_reply_counts(s, now - timedelta(hours=1)),
            sources=await _source_states(s, app),
            bounces=await reports_store.inbound_class_counts(s, INBOUND_EVENTS, now - timedelta(days=1)),
            topic_readers=await _topic_readers(s),
            lease_renewal_failures=await store.counter(s, "lease_renewal_failures"),
        )


async def _topic_readers(s: AsyncSession) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    for lst in await sources_store.active_lists(s):
        offered = [t.slug for t in await topics_store.list_topics(s, lst.id)]
        if offered:
            counts = await topics_store.topic_reader_counts(s, lst.id, offered)
            out.extend((lst.slug, slug, counts[slug]) for slug in offered)
    return out


def _summary(e: Edition, slug: str, counts: dict[str, int]) -> EditionSummary:
    return EditionSummary(e.id, slug, e.kind, e.created_at, e.status, e.pause_reason, e.subject, counts)


async def _recent_editions(s: AsyncSession, list_id: int | None, limit: int) -> list[EditionSummary]:
    rows = await reports_store.edition_counts(s, list_id, limit=limit)
    return [_summary(e, slug, counts) for e, slug, counts in rows]


async def _queue(s: AsyncSession, now: datetime) -> Queue:
    depth, oldest = await reports_store.queue_summary(s, now)
    return Queue(
        depth=depth,
        oldest_wait=(now - oldest) if oldest else None,
        sent_last_minute=await reports_store.sent_since(s, now - timedelta(minutes=1)),
    )


async def _readers_by_list(s: AsyncSession, list_id: int | None) -> dict[str, Readers]:
    found: dict[str, Readers] = {}
    for slug, sub_status, cadence, n in await reports_store.list_reader_counts(s, list_id):
        readers_of = found.setdefault(slug, Readers())
        readers_of.by_status[sub_status] = readers_of.by_status.get(sub_status, 0) + n
        if sub_status == SubscriptionStatus.CONFIRMED:
            by_cadence = readers_of.confirmed_by_cadence
            by_cadence[cadence] = by_cadence.get(cadence, 0) + n
    return found


async def _list_report(s: AsyncSession, lst: MailingList) -> ListReport:
    by_list = await _readers_by_list(s, lst.id)
    last = await reports_store.last_edition_of(s, lst.id)
    next_due, due_soon = await reports_store.next_due_of_list(s, lst.id)
    last_counts = await retention_store.edition_status_counts(s, last.id) if last else {}
    offered = await topics_store.list_topics(s, lst.id)
    readers_per_topic = await topics_store.topic_reader_counts(s, lst.id, [t.slug for t in offered])
    week = await topics_store.topic_article_counts(
        s, [t.id for t in offered], datetime.now(UTC) - timedelta(days=7)
    )
    return ListReport(
        slug=lst.slug,
        name=lst.name,
        schedule=lst.schedule,
        timezone=lst.timezone,
        public=lst.public,
        readers=by_list.get(lst.slug, Readers()),
        last_edition=None if last is None else _summary(last, lst.slug, last_counts),
        next_due_at=next_due,
        due_within_a_day=due_soon,
        topics=tuple(
            TopicLine(t.slug, t.name, t.description, readers_per_topic[t.slug], week.get(t.id, 0))
            for t in offered
        ),
    )


async def _source_states(s: AsyncSession, app: App) -> list[SourceState]:
    configured = {c.name for c in app.cfg.sources}
    return [
        SourceState(
            src.name,
            src.kind,
            src.location,
            src.interval_seconds,
            src.last_fetched_at,
            src.last_success_at,
            src.last_error,
            src.last_error_at,
        )
        for src in await sources_store.all_sources(s)
        if src.name in configured
    ]
