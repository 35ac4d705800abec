"""Read-only queries for status, the web pages, /metrics, the admin page and alerts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    func,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from digest.models import (
    OUTSTANDING,
    Article,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Edition,
    Event,
    MailingList,
    Setting,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)
from digest.store import dialect_insert


async def edition_counts(
    session: AsyncSession, list_id: int | None, limit: int = 20
) -> list[tuple[Edition, str, dict[str, int]]]:
    """Recent editions with their list slug and delivery counts by status."""
    stmt = select(Edition, MailingList.slug).join(MailingList, MailingList.id == Edition.list_id)
    if list_id is not None:
        stmt = stmt.where(Edition.list_id == list_id)
    stmt = stmt.order_by(Edition.id.desc()).limit(limit)
    rows = (await session.execute(stmt)).all()
    ids = [e.id for e, _ in rows]
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    if ids:
        cstmt = (
            select(Delivery.edition_id, Delivery.status, func.count())
            .where(Delivery.edition_id.in_(ids))
            .group_by(Delivery.edition_id, Delivery.status)
        )
        for eid, status, n in (await session.execute(cstmt)).all():
            if eid is not None:
                counts[int(eid)][str(status)] = int(n)
    return [(e, slug, counts[e.id]) for e, slug in rows]


async def delivery_counts(session: AsyncSession) -> dict[tuple[str, str], int]:
    """Deliveries by (kind, status), for the status command and metrics."""
    stmt = select(Delivery.kind, Delivery.status, func.count()).group_by(Delivery.kind, Delivery.status)
    return {(str(k), str(s)): int(n) for k, s, n in (await session.execute(stmt)).all()}


async def article_by_id(session: AsyncSession, article_id: int) -> Article | None:
    return await session.get(Article, article_id)


async def edition_by_id(session: AsyncSession, edition_id: int) -> Edition | None:
    return await session.get(Edition, edition_id)


async def edition_with_slug(session: AsyncSession, edition_id: int) -> tuple[Edition, str] | None:
    """An edition with its list's slug, for `digest editions show`."""
    stmt = (
        select(Edition, MailingList.slug)
        .join(MailingList, MailingList.id == Edition.list_id)
        .where(Edition.id == edition_id)
    )
    row = (await session.execute(stmt)).one_or_none()
    return None if row is None else (row[0], str(row[1]))


def _published() -> ColumnElement[bool]:
    """A digest (never a test send) that reached at least one reader: what the archive may show."""
    received = (
        select(Delivery.id)
        .where(
            Delivery.edition_id == Edition.id,
            Delivery.kind == DeliveryKind.DIGEST,
            Delivery.status.in_([DeliveryStatus.SENT, DeliveryStatus.UNKNOWN]),
        )
        .exists()
    )
    return and_(Edition.kind == DeliveryKind.DIGEST, received)


async def public_editions(session: AsyncSession, list_id: int, limit: int = 100) -> Sequence[Edition]:
    """A list's published digests for its archive page."""
    stmt = (
        select(Edition)
        .where(Edition.list_id == list_id, _published())
        .order_by(Edition.id.desc())
        .limit(limit)
    )
    return (await session.execute(stmt)).scalars().all()


async def is_published(session: AsyncSession, edition_id: int) -> bool:
    """Did this edition reach a reader (so its public web copy may open)?"""
    stmt = select(Edition.id).where(Edition.id == edition_id, _published())
    return (await session.execute(stmt)).first() is not None


async def ping(session: AsyncSession) -> None:
    await session.execute(text("SELECT 1"))


async def list_by_id(session: AsyncSession, list_id: int) -> MailingList | None:
    return await session.get(MailingList, list_id)


async def subscriber_status_counts(session: AsyncSession) -> dict[str, int]:
    """Readers by global status, for /metrics and the admin page."""
    stmt = select(Subscriber.status, func.count()).group_by(Subscriber.status)
    return {str(k): int(n) for k, n in (await session.execute(stmt)).all()}


async def list_reader_counts(session: AsyncSession, list_id: int | None) -> list[tuple[str, str, str, int]]:
    """(list slug, subscription status, cadence, readers): who reads what, and how often."""
    stmt = (
        select(MailingList.slug, Subscription.status, Subscription.cadence, func.count())
        .join(MailingList, MailingList.id == Subscription.list_id)
        .group_by(MailingList.slug, Subscription.status, Subscription.cadence)
        .order_by(MailingList.slug)
    )
    if list_id is not None:
        stmt = stmt.where(Subscription.list_id == list_id)
    return [(str(a), str(b), str(c), int(n)) for a, b, c, n in (await session.execute(stmt)).all()]


async def next_due_of_list(session: AsyncSession, list_id: int) -> tuple[datetime | None, int]:
    """(earliest next slot, readers due within a day of it) of a list's confirmed readers."""
    first = (
        await session.execute(
            select(func.min(Subscription.next_due_at)).where(
                Subscription.list_id == list_id, Subscription.status == SubscriptionStatus.CONFIRMED
            )
        )
    ).scalar_one_or_none()
    if first is None:
        return None, 0
    n = (
        await session.execute(
            select(func.count())
            .select_from(Subscription)
            .where(
                Subscription.list_id == list_id,
                Subscription.status == SubscriptionStatus.CONFIRMED,
                Subscription.next_due_at < first + timedelta(days=1),
            )
        )
    ).scalar_one()
    return first, int(n)


async def sent_since(session: AsyncSession, since: datetime) -> int:
    """Messages accepted by a relay since a time: the current send rate."""
    stmt = select(func.count()).select_from(Delivery).where(Delivery.sent_at >= since)
    return int((await session.execute(stmt)).scalar_one())


async def sent_times_since(session: AsyncSession, since: datetime) -> list[datetime]:
    """When each message since a time was accepted, for the admin page's sends-per-hour chart."""
    stmt = select(Delivery.sent_at).where(Delivery.sent_at >= since)
    return [t for t in (await session.execute(stmt)).scalars().all() if t is not None]


async def smtp_reply_counts(session: AsyncSession, since: datetime) -> list[tuple[str, int | None, int]]:
    """(relay, SMTP code, deliveries) answered since a time: replies by class and relay for /metrics."""
    stmt = (
        select(Delivery.relay, Delivery.smtp_code, func.count())
        .where(Delivery.relay.is_not(None), Delivery.updated_at >= since)
        .group_by(Delivery.relay, Delivery.smtp_code)
    )
    rows = (await session.execute(stmt)).all()
    return [(str(r), None if c is None else int(c), int(n)) for r, c, n in rows]


async def queue_summary(session: AsyncSession, now: datetime) -> tuple[int, datetime | None]:
    """(outstanding deliveries, due time of the oldest one that is due): queue depth and age."""
    depth = (
        await session.execute(
            select(func.count()).select_from(Delivery).where(Delivery.status.in_(list(OUTSTANDING)))
        )
    ).scalar_one()
    oldest = (
        await session.execute(
            select(func.min(Delivery.next_attempt_at)).where(
                Delivery.status.in_(list(OUTSTANDING)), Delivery.next_attempt_at <= now
            )
        )
    ).scalar_one_or_none()
    return int(depth), oldest


async def inbound_class_counts(
    session: AsyncSession, kinds: Sequence[str], since: datetime
) -> list[tuple[str, str | None, int]]:
    """(event kind, bounce class, events) since a time: bounces by class for /metrics."""
    klass = Event.detail["bounce_class"].as_string()
    stmt = (
        select(Event.kind, klass, func.count())
        .where(Event.kind.in_(kinds), Event.created_at >= since)
        .group_by(Event.kind, klass)
    )
    return [(str(k), c, int(n)) for k, c, n in (await session.execute(stmt)).all()]


async def recent_reader_events(
    session: AsyncSession, kinds: Sequence[str], limit: int
) -> list[tuple[datetime, str, dict[str, Any], str | None]]:
    """(time, kind, detail, reader address) of the latest bounces and unsubscribes, for the admin page."""
    stmt = (
        select(Event.created_at, Event.kind, Event.detail, Subscriber.email)
        .outerjoin(Subscriber, Subscriber.id == Event.subscriber_id)
        .where(Event.kind.in_(kinds))
        .order_by(Event.id.desc())
        .limit(limit)
    )
    return [(t, str(k), dict(d or {}), e) for t, k, d, e in (await session.execute(stmt)).all()]


async def edition_reply_groups(
    session: AsyncSession, edition_id: int
) -> list[tuple[str, int | None, str, int]]:
    """(status, code, reply, deliveries) of an edition's unsuccessful messages, grouped by reply."""
    stmt = (
        select(Delivery.status, Delivery.smtp_code, Delivery.smtp_reply, func.count())
        .where(
            Delivery.edition_id == edition_id,
            Delivery.status.in_([DeliveryStatus.FAILED, DeliveryStatus.DEFERRED, DeliveryStatus.UNKNOWN]),
        )
        .group_by(Delivery.status, Delivery.smtp_code, Delivery.smtp_reply)
        .order_by(func.count().desc())
    )
    return [(str(s), c, str(r or ""), int(n)) for s, c, r, n in (await session.execute(stmt)).all()]


async def edition_send_span(
    session: AsyncSession, edition_id: int
) -> tuple[datetime | None, datetime | None, int]:
    """(first, last, count) of an edition's accepted messages: how fast it went out."""
    stmt = select(func.min(Delivery.sent_at), func.max(Delivery.sent_at), func.count(Delivery.sent_at)).where(
        Delivery.edition_id == edition_id
    )
    first, last, n = (await session.execute(stmt)).one()
    return first, last, int(n)


async def edition_recipients(
    session: AsyncSession, edition_id: int
) -> list[tuple[str, str, int | None, str | None]]:
    """(address, status, code, reply) of every message of an edition: who got it, who bounced, why."""
    stmt = (
        select(Delivery.address, Delivery.status, Delivery.smtp_code, Delivery.smtp_reply)
        .where(Delivery.edition_id == edition_id)
        .order_by(Delivery.address)
    )
    return [(str(a), str(s), c, r) for a, s, c, r in (await session.execute(stmt)).all()]


async def last_edition_of(session: AsyncSession, list_id: int) -> Edition | None:
    """A list's latest digest (not a test send), for `digest lists`."""
    stmt = (
        select(Edition)
        .where(Edition.list_id == list_id, Edition.kind == DeliveryKind.DIGEST)
        .order_by(Edition.id.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def claim_alert_slot(session: AsyncSession, key: str, now: datetime, window: timedelta) -> bool:
    """True when no alert of this kind went out within the window, shared by every process."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    cutoff = (now - window).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    updated = await session.execute(
        update(Setting).where(Setting.key == key, Setting.value < cutoff).values(value=stamp)
    )
    if updated.rowcount:  # type: ignore[attr-defined]
        return True
    inserted = await session.execute(
        dialect_insert(session, Setting).values(key=key, value=stamp).on_conflict_do_nothing()
    )
    return bool(inserted.rowcount)  # type: ignore[attr-defined]


async def latest_sent_edition(session: AsyncSession, list_id: int) -> Edition | None:
    """A list's latest published digest: what a welcome mail links to."""
    stmt = (
        select(Edition).where(Edition.list_id == list_id, _published()).order_by(Edition.id.desc()).limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()
