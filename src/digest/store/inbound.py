"""Bounces and complaints: scores, suppression and the inbound events they leave."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Table,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from digest.models import (
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Edition,
    EditionStatus,
    Event,
    InboundMessage,
    MailboxProgress,
    Subscriber,
)
from digest.store import dialect_insert, is_postgres


async def mark_deliveries_bounced(
    session: AsyncSession, failed: Sequence[tuple[int, int | None, str]], now: datetime
) -> None:
    """DSNs prove deliveries we recorded as sent (or unknown) never arrived: (id, code, reply) each,
    in one statement; the watermark stays."""
    if not failed:
        return
    table = cast(Table, Delivery.__table__)
    stmt = (
        update(table)  # Core, not ORM: one executemany over the rows
        .where(
            table.c.id == bindparam("delivery"),
            or_(table.c.status == DeliveryStatus.SENT, table.c.status == DeliveryStatus.UNKNOWN),
        )
        .values(
            status=DeliveryStatus.FAILED,
            smtp_code=bindparam("code"),
            smtp_reply=bindparam("reply"),
            updated_at=now,
        )
    )
    rows = [{"delivery": i, "code": code, "reply": reply[:2000]} for i, code, reply in failed]
    await session.execute(stmt, rows)


async def bounce_histories(
    session: AsyncSession, subscriber_ids: Sequence[int]
) -> dict[int, list[tuple[datetime, str]]]:
    """Readers' bounces (time, class) since an operator last lifted their suppression, oldest
    first, for the Mailman score; the class is read out of the JSON, never the raw message."""
    if not subscriber_ids:
        return {}
    lifted_events = aliased(Event)
    lifted = (
        select(func.max(lifted_events.created_at))
        .where(lifted_events.subscriber_id == Event.subscriber_id, lifted_events.kind == "unsuppressed")
        .scalar_subquery()
    )
    stmt = (
        select(Event.subscriber_id, Event.created_at, Event.detail["bounce_class"].as_string())
        .where(
            Event.subscriber_id.in_(list(subscriber_ids)),
            Event.kind == "bounced",
            or_(lifted.is_(None), Event.created_at > lifted),
        )
        .order_by(Event.created_at, Event.id)
    )
    found: dict[int, list[tuple[datetime, str]]] = {}
    for reader, when, klass in (await session.execute(stmt)).all():
        found.setdefault(int(reader), []).append((when, str(klass or "")))
    return found


async def set_bounce_scores(session: AsyncSession, scores: dict[int, float], now: datetime) -> None:
    """Keep readers' current bounce scores where operators (and `subscribers show`) see them."""
    if not scores:
        return
    table = cast(Table, Subscriber.__table__)
    stmt = (
        update(table)
        .where(table.c.id == bindparam("reader"))
        .values(bounce_score=bindparam("score"), updated_at=now)
    )
    await session.execute(stmt, [{"reader": r, "score": score} for r, score in scores.items()])


async def known_inbound(session: AsyncSession, keys: Sequence[str]) -> set[str]:
    """Which of these inbound messages were dealt with before: a rerun skips them unread."""
    if not keys:
        return set()
    stmt = select(InboundMessage.key).where(InboundMessage.key.in_(list(keys)))
    return set((await session.execute(stmt)).scalars().all())


async def remember_many(session: AsyncSession, rows: Sequence[tuple[str, str]], now: datetime) -> bool:
    """Record inbound messages as dealt with, (key, outcome) each; False if any was already: the
    caller rolls back what it did, so the same bounce never counts twice, even concurrently."""
    if not rows:
        return True
    table = cast(Table, InboundMessage.__table__)
    stmt = dialect_insert(session, table).on_conflict_do_nothing().returning(table.c.key)
    result = await session.execute(stmt, [{"key": k, "outcome": o, "created_at": now} for k, o in rows])
    return len(result.all()) == len(rows)


async def mailbox_progress(session: AsyncSession, path: str) -> tuple[int, str] | None:
    """(offset, fingerprint) up to which an mbox file was processed, or None for a new one."""
    found = await session.get(MailboxProgress, path)
    return (found.offset, found.fingerprint) if found is not None else None


async def save_mailbox_progress(
    session: AsyncSession, path: str, offset: int, fingerprint: str, now: datetime
) -> None:
    """Where the next `bounces process` of this mbox starts reading."""
    found = await session.get(MailboxProgress, path)
    if found is None:
        session.add(MailboxProgress(path=path, offset=offset, fingerprint=fingerprint, updated_at=now))
    else:
        found.offset, found.fingerprint, found.updated_at = offset, fingerprint, now


async def last_sent_delivery(session: AsyncSession, subscription_id: int) -> Delivery | None:
    """The digest a token-only complaint most likely refers to: the reader's latest one that arrived."""
    stmt = (
        select(Delivery)
        .where(
            Delivery.subscription_id == subscription_id,
            Delivery.kind == DeliveryKind.DIGEST,
            Delivery.sent_at.is_not(None),
        )
        .order_by(Delivery.sent_at.desc(), Delivery.id.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def edition_complaint_counts(session: AsyncSession, edition_id: int) -> tuple[int, int]:
    """(complaints, delivered) for one edition: its complaint rate (STANDARDS item 23)."""
    complaints = (
        select(func.count(func.distinct(Event.delivery_id)))
        .select_from(Event)
        .join(Delivery, Delivery.id == Event.delivery_id)
        .where(Event.kind == "complained", Delivery.edition_id == edition_id)
    )
    delivered = (
        select(func.count())
        .select_from(Delivery)
        .where(Delivery.edition_id == edition_id, Delivery.status == DeliveryStatus.SENT)
    )
    return (
        int((await session.execute(complaints)).scalar_one()),
        int((await session.execute(delivered)).scalar_one()),
    )


async def sent_day_complaint_counts(session: AsyncSession, start: datetime, end: datetime) -> tuple[int, int]:
    """(complaints, delivered) over the digests sent in [start, end): the daily complaint rate."""
    complaints = (
        select(func.count(func.distinct(Event.delivery_id)))
        .select_from(Event)
        .join(Delivery, Delivery.id == Event.delivery_id)
        .where(Event.kind == "complained", Delivery.sent_at >= start, Delivery.sent_at < end)
    )
    delivered = (
        select(func.count())
        .select_from(Delivery)
        .where(
            Delivery.kind == DeliveryKind.DIGEST,
            Delivery.status == DeliveryStatus.SENT,
            Delivery.sent_at >= start,
            Delivery.sent_at < end,
        )
    )
    return (
        int((await session.execute(complaints)).scalar_one()),
        int((await session.execute(delivered)).scalar_one()),
    )


async def sending_editions(session: AsyncSession) -> list[int]:
    """Editions still going out: what a complaint-rate alarm pauses."""
    stmt = select(Edition.id).where(Edition.status == EditionStatus.SENDING).order_by(Edition.id)
    return [int(i) for i in (await session.execute(stmt)).scalars().all()]


async def lift_suppression(session: AsyncSession, subscriber_id: int, now: datetime) -> None:
    """An operator lets a suppressed reader receive mail again, with a clean bounce score."""
    await session.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .values(status="active", bounce_score=0.0, updated_at=now)
    )


RAW_TRIM_BATCH = 500  # events per statement when raw bounce messages are dropped


async def trim_event_raw(session: AsyncSession, kinds: Sequence[str], before: datetime) -> int:
    """Raw bounce messages are kept 30 days for diagnosis, then dropped from their events."""
    trimmed = 0
    while n := await trim_raw_batch(session, kinds, before, RAW_TRIM_BATCH):
        trimmed += n
    return trimmed


async def trim_raw_batch(session: AsyncSession, kinds: Sequence[str], before: datetime, limit: int) -> int:
    """One batch of bounce events whose raw message is past retention: the message is dropped and
    the facts kept, inside the database (the raw messages, up to 64 KB each, are never loaded)."""
    ids = (
        select(Event.id)
        .where(Event.kind.in_(kinds), Event.created_at < before, Event.detail["raw"].as_string().is_not(None))
        .order_by(Event.id)
        .limit(limit)
    )
    found = list((await session.execute(ids)).scalars().all())
    if not found:
        return 0
    if is_postgres(session):
        without_raw: Any = literal_column(
            """(detail::jsonb - 'raw' || '{"raw_trimmed": true}'::jsonb)::json"""
        )
    else:
        without_raw = func.json_set(
            func.json_remove(Event.detail, "$.raw"), "$.raw_trimmed", func.json("true")
        )
    await session.execute(
        update(Event)
        .where(Event.id.in_(found))
        .values(detail=without_raw)
        .execution_options(synchronize_session=False)
    )
    return len(found)


async def inbound_events_since(
    session: AsyncSession, kinds: Sequence[str], since: datetime
) -> list[tuple[str, dict[str, Any], str | None, str | None]]:
    """(kind, detail, delivery address, reader address) of bounce-inbox events, for the report."""
    stmt = (
        select(Event.kind, Event.detail, Delivery.address, Subscriber.email)
        .outerjoin(Delivery, Delivery.id == Event.delivery_id)
        .outerjoin(Subscriber, Subscriber.id == Event.subscriber_id)
        .where(Event.kind.in_(kinds), Event.created_at >= since)
        .order_by(Event.id)
    )
    return [(str(k), dict(d or {}), a, e) for k, d, a, e in (await session.execute(stmt)).all()]
