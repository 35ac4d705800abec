"""Retention and erasure: batched prune steps and hash-only erasure of a reader."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Text,
    cast,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from digest.models import (
    OUTSTANDING,
    Delivery,
    DeliveryStatus,
    Edition,
    EditionStatus,
    Event,
    InboundMessage,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)
from digest.store import Database
from digest.store.readers import subscriber_by_email


def erased_email(email_key: str) -> str:
    """The placeholder an erased reader's address becomes: a hash, so imports can still refuse it."""
    import hashlib

    return f"erased-{hashlib.sha256(email_key.encode()).hexdigest()}@invalid"


async def erased_reader(session: AsyncSession, email_key: str) -> bool:
    """Was this address erased on request (so operators may not add it back without new consent)?"""
    return await subscriber_by_email(session, erased_email(email_key)) is not None


async def erase_subscriber(
    session: AsyncSession, reader: Subscriber, now: datetime, spellings: Sequence[str]
) -> int:
    """Replace a reader's personal data by its hash everywhere it is kept; returns deliveries scrubbed.

    `spellings` are the forms the address may be stored in (as given, its wire form with an ASCII
    domain, JSON-escaped): any delivery or event that still mentions one after the reader's own rows
    are scrubbed (a bounce for a delivery since pruned, a complaint that named no reader) is cleared.
    """
    address, marker = reader.email, erased_email(reader.email_key)
    subs = select(Subscription.id).where(Subscription.subscriber_id == reader.id)
    await session.execute(
        update(Subscriber)
        .where(Subscriber.id == reader.id)
        .values(
            email=marker, email_key=marker, name="", status="suppressed", bounce_score=0.0, updated_at=now
        )
    )
    await session.execute(
        update(Subscription)
        .where(Subscription.subscriber_id == reader.id)
        .values(
            status=SubscriptionStatus.UNSUBSCRIBED,
            next_due_at=None,
            unsubscribed_at=func.coalesce(Subscription.unsubscribed_at, now),
            unsubscribe_method=func.coalesce(Subscription.unsubscribe_method, "erased"),
            signup_ip=None,
            signup_user_agent=None,
            signup_source=None,
            signup_referer=None,
            confirm_ip=None,
            confirm_user_agent=None,
        )
    )
    for sub_id in (await session.execute(subs)).scalars().all():
        await session.execute(
            update(Subscription).where(Subscription.id == sub_id).values(token=secrets.token_urlsafe(24))
        )
    await session.execute(
        update(Delivery)
        .where(Delivery.status.in_(list(OUTSTANDING)), Delivery.subscription_id.in_(subs))
        .values(status=DeliveryStatus.SKIPPED, smtp_reply="reader erased", lease_owner=None, updated_at=now)
    )
    forms = sorted({f.lower() for f in (address, *spellings)})
    scrubbed = await session.execute(
        update(Delivery)
        .where(or_(Delivery.subscription_id.in_(subs), func.lower(Delivery.address).in_(forms)))
        .values(address=marker, smtp_reply=None, body_html=None, body_text=None, subject=None)
    )
    mine = select(Delivery.id).where(Delivery.address == marker)
    await session.execute(
        update(Event)
        .where(
            or_(
                Event.subscriber_id == reader.id,
                Event.subscription_id.in_(subs),
                Event.delivery_id.in_(mine),
                *(_mentions(Event.detail, f) for f in forms),
            )
        )
        .values(detail={})
    )
    await session.execute(
        update(Delivery)
        .where(or_(*(_mentions(col, f) for col in _DELIVERY_TEXT for f in forms)))
        .values(smtp_reply=None, body_html=None, body_text=None, subject=None)
    )
    # A raw message that is not UTF-8 is kept in base64, where no LIKE finds the address: decode
    # them (only bounce events younger than the raw retention still hold one).
    encoded = select(Event).where(Event.detail["raw_base64"].as_boolean().is_(True))
    for event in (await session.execute(encoded)).scalars():
        raw = base64.b64decode(str(event.detail.get("raw", ""))).decode("utf-8", "replace").lower()
        if any(f in raw for f in forms):
            event.detail = {}
    await session.flush()
    return int(scrubbed.rowcount)  # type: ignore[attr-defined]


_DELIVERY_TEXT = (Delivery.smtp_reply, Delivery.body_html, Delivery.body_text, Delivery.subject)


def _mentions(column: Any, spelling: str) -> ColumnElement[bool]:
    """Does a text (or JSON) column hold this address, in any letter case? A full scan: erasure is rare."""
    return func.lower(cast(column, Text)).contains(spelling, autoescape=True)


@asynccontextmanager
async def bulk_delete(database: Database) -> AsyncIterator[AsyncSession]:
    """A write transaction for batched deletes. On SQLite, foreign-key actions are switched off for
    it: without an index on events.delivery_id each deleted delivery would scan every event, so the
    caller clears those references itself, once per batch."""
    if not database.is_sqlite:
        async with database.write() as s:
            yield s
        return
    async with database.writer.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.execute("PRAGMA foreign_keys=OFF")
        try:
            async with AsyncSession(bind=conn, expire_on_commit=False) as s, s.begin():
                yield s
        finally:
            await driver.execute("PRAGMA foreign_keys=ON")


async def delete_old_events(session: AsyncSession, before: datetime, keep: Sequence[str], limit: int) -> int:
    """One batch of audit events past retention (oldest first: they sit at the low ids)."""
    ids = (
        select(Event.id)
        .where(Event.created_at < before, Event.kind.not_in(keep))
        .order_by(Event.id)
        .limit(limit)
    )
    found = list((await session.execute(ids)).scalars().all())
    if not found:
        return 0
    await session.execute(delete(Event).where(Event.id.in_(found)))
    return len(found)


async def forget_inbound_messages(session: AsyncSession, before: datetime, limit: int) -> int:
    """One batch of remembered inbound messages past retention: a copy arriving later than that
    would be applied again, which is why they live as long as the events they made."""
    keys = select(InboundMessage.key).where(InboundMessage.created_at < before).limit(limit)
    found = list((await session.execute(keys)).scalars().all())
    if not found:
        return 0
    await session.execute(delete(InboundMessage).where(InboundMessage.key.in_(found)))
    return len(found)


async def strip_edition_bodies(session: AsyncSession, before: datetime, note: str, limit: int) -> int:
    """One batch of finished editions past retention: their rendered bodies become a short note."""
    ids = (
        select(Edition.id)
        .where(
            Edition.created_at < before,
            Edition.status.in_([EditionStatus.DONE, EditionStatus.CANCELLED]),
            Edition.html != note,
        )
        .order_by(Edition.id)
        .limit(limit)
    )
    found = list((await session.execute(ids)).scalars().all())
    if found:
        await session.execute(update(Edition).where(Edition.id.in_(found)).values(html=note, text=""))
    return len(found)


async def delete_old_deliveries(session: AsyncSession, before: datetime, limit: int) -> int:
    """One batch of finished deliveries past retention; events that named them keep their facts."""
    final = [s for s in DeliveryStatus if s not in OUTSTANDING]
    ids = (
        select(Delivery.id)
        .where(Delivery.created_at < before, Delivery.status.in_(final))
        .order_by(Delivery.id)
        .limit(limit)
    )
    found = list((await session.execute(ids)).scalars().all())
    if not found:
        return 0
    await session.execute(update(Event).where(Event.delivery_id.in_(found)).values(delivery_id=None))
    await session.execute(delete(Delivery).where(Delivery.id.in_(found)))
    return len(found)


async def policy_rejections_since(session: AsyncSession, since: datetime) -> list[tuple[str, str, int]]:
    """(relay, reply, deliveries) answered 5.7.x since a time: a relay refusing on policy alerts."""
    stmt = (
        select(Delivery.relay, Delivery.smtp_reply, func.count())
        .where(
            Delivery.updated_at >= since,
            Delivery.smtp_code >= 500,
            Delivery.smtp_reply.like("%5.7.%"),
        )
        .group_by(Delivery.relay, Delivery.smtp_reply)
        .order_by(func.count().desc())
    )
    return [(str(r or "?"), str(t or ""), int(n)) for r, t, n in (await session.execute(stmt)).all()]


async def edition_status_counts(session: AsyncSession, edition_id: int) -> dict[str, int]:
    """One edition's deliveries by status, for `digest editions show`."""
    stmt = (
        select(Delivery.status, func.count())
        .where(Delivery.edition_id == edition_id)
        .group_by(Delivery.status)
    )
    return {str(k): int(n) for k, n in (await session.execute(stmt)).all()}
