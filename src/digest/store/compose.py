"""Compose queries: which articles are new for a list, which readers are due, and the
set-based inserts that turn due readers into deliveries."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    String,
    and_,
    case,
    false,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from digest.models import (
    OUTSTANDING,
    Article,
    ArticleSource,
    ArticleTopic,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Event,
    ListSource,
    Source,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Topic,
    UTCDateTime,
)
from digest.store import dialect_insert


async def list_max_seq(session: AsyncSession, list_id: int) -> int:
    """The newest sighting any of the list's sources has committed."""
    stmt = (
        select(func.coalesce(func.max(ArticleSource.seq), 0))
        .join(ListSource, ListSource.source_id == ArticleSource.source_id)
        .where(ListSource.list_id == list_id)
    )
    return int((await session.execute(stmt)).scalar_one())


@dataclass(frozen=True)
class Candidate:
    article: Article
    source_name: str
    seq: int


async def new_articles_for_list(
    session: AsyncSession,
    list_id: int,
    after_seq: int,
    upto_seq: int,
    since: datetime,
    topics: Sequence[str] | None = None,
) -> list[Candidate]:
    """Articles first seen by this list in (after_seq, upto_seq], published since `since`, and
    with `topics`, only those matched to one of these topic slugs of the list.

    An article seen in two of the list's sources counts at its first sighting, so a reader who
    already had it from one source does not get it again when the other source catches up.
    """
    first = (
        select(ArticleSource.article_id, func.min(ArticleSource.seq).label("seq"))
        .join(ListSource, ListSource.source_id == ArticleSource.source_id)
        .where(ListSource.list_id == list_id, ArticleSource.seq <= upto_seq)
        .group_by(ArticleSource.article_id)
        .subquery()
    )
    stmt = (
        select(Article, Source.name, first.c.seq)
        .join(first, first.c.article_id == Article.id)
        .join(ArticleSource, and_(ArticleSource.article_id == Article.id, ArticleSource.seq == first.c.seq))
        .join(Source, Source.id == ArticleSource.source_id)
        .where(first.c.seq > after_seq, Article.published_at >= since)
        .order_by(Article.published_at.desc(), first.c.seq.desc())
    )
    if topics is not None:
        chosen = (
            select(ArticleTopic.article_id)
            .join(Topic, Topic.id == ArticleTopic.topic_id)
            .where(Topic.list_id == list_id, Topic.slug.in_(list(topics)))
        )
        stmt = stmt.where(Article.id.in_(chosen))
    rows = (await session.execute(stmt)).all()
    return [Candidate(article=a, source_name=name, seq=int(seq)) for a, name, seq in rows]


async def articles_by_ids(session: AsyncSession, ids: Sequence[int]) -> list[Article]:
    found = {a.id: a for a in (await session.execute(select(Article).where(Article.id.in_(ids)))).scalars()}
    return [found[i] for i in ids if i in found]


@dataclass(frozen=True)
class Slot:
    """One reader due for a digest, as little as composing needs (100,000 of these stay small)."""

    id: int
    watermark: int
    cadence: str
    send_hour: int | None
    weekday: int | None
    timezone: str | None
    next_due_at: datetime | None
    topics: str | None = None  # the reader's topic choice (None: every topic)


def _sendable(list_id: int, *, by_id: bool = False) -> Any:
    """Confirmed, active readers of the list with nothing outstanding. `by_id`: the statement names
    its rows by id, and only the primary key may drive it. Otherwise a planner without fresh
    statistics may scan a (list, status) or (status, due) index range of every due reader for
    each chunk of 40 ids, which made a 100,000-reader tick quadratic (minutes, not seconds);
    `coalesce` keeps those terms out of index matching on SQLite and PostgreSQL alike."""
    outstanding = (
        select(Delivery.id)
        .where(Delivery.subscription_id == Subscription.id, Delivery.status.in_(list(OUTSTANDING)))
        .exists()
    )
    list_col: Any = Subscription.list_id
    status_col: Any = Subscription.status
    reader_status: Any = Subscriber.status
    if by_id:
        list_col, status_col = func.coalesce(list_col, 0), func.coalesce(status_col, "")
        reader_status = func.coalesce(reader_status, "")
    active = select(Subscriber.id).where(
        Subscriber.id == Subscription.subscriber_id, reader_status == "active"
    )
    return and_(
        list_col == list_id,
        status_col == SubscriptionStatus.CONFIRMED,
        Subscription.confirmed_at.is_not(None),
        active.exists(),
        ~outstanding,
    )


async def due_readers(session: AsyncSession, list_id: int, due_before: datetime | None) -> list[Slot]:
    """Confirmed, active readers of a list with nothing outstanding (and, with `due_before`, due)."""
    stmt = select(
        Subscription.id,
        Subscription.watermark,
        Subscription.cadence,
        Subscription.send_hour,
        Subscription.weekday,
        Subscription.timezone,
        Subscription.next_due_at,
        Subscription.topics,
    ).where(_sendable(list_id))
    if due_before is not None:
        stmt = stmt.where(Subscription.next_due_at <= due_before)
    return [Slot(*row) for row in (await session.execute(stmt.order_by(Subscription.id))).all()]


async def advance_readers(
    session: AsyncSession,
    list_id: int,
    ids: Sequence[int],
    old_watermark: int,
    new_watermark: int,
    next_due: datetime,
    now: datetime,
    due_before: datetime | None,
    choices: Collection[str | None] | None = None,
    *,
    sent: bool = True,
) -> list[tuple[int, str | None]]:
    """Compare-and-set watermark and next slot for a set of readers; returns those this composer
    won, each with its topic choice.

    The row locks this UPDATE takes come before any delivery is inserted, so two composers
    (a second scheduler, a retried tick) can never both compose for one reader. With `choices`,
    only readers whose topic choice is one of them are taken: one who changed it since the draft
    waits for the next pass.
    """
    cond = [
        Subscription.id.in_(ids),
        Subscription.watermark == old_watermark,
        _sendable(list_id, by_id=True),
    ]
    if due_before is not None:
        cond.append(func.coalesce(Subscription.next_due_at, due_before + timedelta(days=1)) <= due_before)
    if choices is not None:  # '' stands for every topic (NULL): no stored choice is empty
        keys = ["" if c is None else c for c in choices]
        cond.append(func.coalesce(Subscription.topics, "").in_(keys) if keys else false())
    values: dict[str, Any] = {"watermark": new_watermark, "next_due_at": next_due}
    if sent and new_watermark != old_watermark:
        values["last_digest_at"] = now
    stmt = update(Subscription).where(*cond).values(**values).returning(Subscription.id, Subscription.topics)
    return [(int(i), t) for i, t in (await session.execute(stmt)).all()]


async def insert_digest_deliveries(
    session: AsyncSession,
    editions: Mapping[str | None, int],
    ids: Sequence[int],
    from_seq: int,
    to_seq: int,
    now: datetime,
    message_id_suffix: str,
) -> int:
    """One INSERT … SELECT for a chunk of readers, each into the edition of their topic choice
    (`editions`: choice → edition; None is every topic). Message-IDs are
    <d{edition}.{subscription}{suffix}>."""
    sid = func.cast(Subscription.id, String)
    by_choice = [
        (Subscription.topics.is_(None) if choice is None else Subscription.topics == choice, edition)
        for choice, edition in editions.items()
    ]
    edition_id: ColumnElement[int] = literal(by_choice[0][1]) if len(by_choice) == 1 else case(*by_choice)
    edition_text = func.cast(edition_id, String)
    source = (
        select(
            literal(DeliveryKind.DIGEST.value),
            edition_id,
            Subscription.id,
            Subscriber.email,
            # The edition is part of the key: after a failure rolls a watermark back, the same seq
            # range is composed again into a new edition and must not collide with the failed row.
            # The compare-and-set in advance_readers is what makes composition exactly-once.
            literal("digest:") + sid + literal(f":{from_seq}:{to_seq}:") + edition_text,
            literal(from_seq),
            literal(to_seq),
            literal(10),
            literal(DeliveryStatus.PENDING.value),
            literal(0),
            literal(now, UTCDateTime()),
            literal("<d") + edition_text + literal(".") + sid + literal(message_id_suffix),
            literal(now, UTCDateTime()),
            literal(now, UTCDateTime()),
        )
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Subscription.id.in_(ids))
    )
    columns = [
        "kind", "edition_id", "subscription_id", "address", "dedupe_key", "from_seq", "to_seq", "priority",
        "status", "attempts", "next_attempt_at", "message_id", "created_at", "updated_at",
    ]  # fmt: skip
    stmt = (
        dialect_insert(session, Delivery)
        .from_select(columns, source)
        .on_conflict_do_nothing()
        .returning(Delivery.id)
    )
    return len((await session.execute(stmt)).all())


async def record_skips(session: AsyncSession, ids: Sequence[int], now: datetime, next_due: datetime) -> None:
    """A `skipped` event for each reader whose slot came with nothing new."""
    source = select(
        Subscription.subscriber_id,
        Subscription.id,
        literal("skipped"),
        literal({"reason": "nothing new", "next_due_at": next_due.isoformat()}, JSON()),
        literal(now, UTCDateTime()),
    ).where(Subscription.id.in_(ids))
    stmt = insert(Event).from_select(
        ["subscriber_id", "subscription_id", "kind", "detail", "created_at"], source
    )
    await session.execute(stmt)


async def insert_delivery(session: AsyncSession, values: dict[str, Any]) -> int | None:
    """Insert one delivery; None when its dedupe key exists already (composed before)."""
    stmt = dialect_insert(session, Delivery).values(**values).on_conflict_do_nothing().returning(Delivery.id)
    row = (await session.execute(stmt)).first()
    return int(row[0]) if row else None


async def insert_transactional(
    session: AsyncSession,
    *,
    subscription_id: int,
    address: str,
    message_id: str,
    subject: str,
    html: str,
    text: str,
    now: datetime,
) -> int:
    """Queue one rendered transactional mail (confirmation, welcome) first in line; it carries its
    own parts, and no dedupe key, so it is always inserted."""
    new_id = await insert_delivery(
        session,
        {
            "kind": DeliveryKind.TRANSACTIONAL,
            "edition_id": None,
            "subscription_id": subscription_id,
            "address": address,
            "priority": 0,
            "status": DeliveryStatus.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "message_id": message_id,
            "subject": subject,
            "body_html": html,
            "body_text": text,
            "created_at": now,
            "updated_at": now,
        },
    )
    assert new_id is not None  # no dedupe key to conflict on
    return new_id


async def set_next_due(session: AsyncSession, subscription_id: int, next_due: datetime | None) -> None:
    await session.execute(
        update(Subscription).where(Subscription.id == subscription_id).values(next_due_at=next_due)
    )
