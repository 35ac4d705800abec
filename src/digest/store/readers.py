"""Readers: subscribers, subscriptions, their events and the signup housekeeping queries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Select,
    Table,
    delete,
    func,
    insert,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession

from digest.models import (
    Delivery,
    Event,
    MailingList,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)


async def subscriber_by_email(session: AsyncSession, email_key: str) -> Subscriber | None:
    stmt = select(Subscriber).where(Subscriber.email_key == email_key)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_or_create_subscriber(
    session: AsyncSession, email: str, email_key: str, name: str, now: datetime
) -> tuple[Subscriber, bool]:
    found = await subscriber_by_email(session, email_key)
    if found:
        return found, False
    sub = Subscriber(email=email, email_key=email_key, name=name, created_at=now, updated_at=now)
    session.add(sub)
    await session.flush()
    return sub, True


async def subscription_for(session: AsyncSession, subscriber_id: int, list_id: int) -> Subscription | None:
    stmt = select(Subscription).where(
        Subscription.subscriber_id == subscriber_id, Subscription.list_id == list_id
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def subscription_by_token(session: AsyncSession, token: str) -> Subscription | None:
    return (
        await session.execute(select(Subscription).where(Subscription.token == token))
    ).scalar_one_or_none()


async def subscriptions_of(
    session: AsyncSession, subscriber_id: int
) -> list[tuple[Subscription, MailingList]]:
    stmt = (
        select(Subscription, MailingList)
        .join(MailingList, MailingList.id == Subscription.list_id)
        .where(Subscription.subscriber_id == subscriber_id)
        .order_by(MailingList.slug)
    )
    return [(s, lst) for s, lst in (await session.execute(stmt)).all()]


def _readers_query(list_id: int | None, status: str | None) -> Select[Subscriber, Subscription, MailingList]:
    stmt = (
        select(Subscriber, Subscription, MailingList)
        .join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .join(MailingList, MailingList.id == Subscription.list_id)
    )
    if list_id is not None:
        stmt = stmt.where(Subscription.list_id == list_id)
    if status is not None:
        stmt = stmt.where(Subscription.status == status)
    return stmt


async def readers_after(
    session: AsyncSession, list_id: int | None, after: tuple[str, str] | None, limit: int
) -> list[tuple[Subscriber, Subscription, MailingList]]:
    """The next `limit` subscriptions after (address key, list slug): an export reads its rows
    page by page in this order, so memory holds one page whatever the number of readers."""
    stmt = _readers_query(list_id, None).order_by(Subscriber.email_key, MailingList.slug).limit(limit)
    if after is not None:
        stmt = stmt.where(tuple_(Subscriber.email_key, MailingList.slug) > tuple_(*after))
    return [(r[0], r[1], r[2]) for r in (await session.execute(stmt)).all()]


async def readers_page(
    session: AsyncSession, list_id: int | None, status: str | None, limit: int, offset: int
) -> tuple[list[tuple[Subscriber, Subscription, MailingList]], int]:
    """One page of subscriptions (the API's listing) and how many there are in all."""
    stmt = _readers_query(list_id, status)
    total = int((await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one())
    page = stmt.order_by(Subscriber.email_key, MailingList.slug).limit(limit).offset(offset)
    return [(r[0], r[1], r[2]) for r in (await session.execute(page)).all()], total


async def add_event(
    session: AsyncSession,
    kind: str,
    now: datetime,
    *,
    subscriber_id: int | None,
    subscription_id: int | None = None,
    delivery_id: int | None = None,
    **detail: Any,
) -> None:
    session.add(
        Event(
            subscriber_id=subscriber_id,
            subscription_id=subscription_id,
            delivery_id=delivery_id,
            kind=kind,
            detail=detail,
            created_at=now,
        )
    )


async def add_events(
    session: AsyncSession, events: Sequence[tuple[str, dict[str, Any]]], now: datetime
) -> None:
    """Many events in one statement (a mailbox of bounces): (kind, fields) each, where fields holds
    subscriber_id, subscription_id and delivery_id and the rest is the detail."""
    if not events:
        return
    ids = ("subscriber_id", "subscription_id", "delivery_id")
    rows = [
        {
            **{k: fields.get(k) for k in ids},
            "kind": kind,
            "detail": {k: v for k, v in fields.items() if k not in ids},
            "created_at": now,
        }
        for kind, fields in events
    ]
    await session.execute(insert(cast(Table, Event.__table__)), rows)  # Core: no ORM objects to track


async def events_of(session: AsyncSession, subscriber_id: int, limit: int = 50) -> Sequence[Event]:
    stmt = (
        select(Event)
        .where(Event.subscriber_id == subscriber_id)
        .order_by(Event.created_at.desc(), Event.id.desc())
        .limit(limit)
    )
    return (await session.execute(stmt)).scalars().all()


async def deliveries_to(session: AsyncSession, address: str, limit: int = 10) -> Sequence[Delivery]:
    stmt = (
        select(Delivery)
        .where(func.lower(Delivery.address) == address.lower())
        .order_by(Delivery.id.desc())
        .limit(limit)
    )
    return (await session.execute(stmt)).scalars().all()


async def subscription_by_id(session: AsyncSession, subscription_id: int) -> Subscription | None:
    """A subscription named by a confirmation token (which carries ids, never addresses)."""
    return await session.get(Subscription, subscription_id)


async def subscription_for_update(session: AsyncSession, subscription_id: int) -> Subscription | None:
    """Lock a subscription while confirming it, so two clicks confirm (and record) it once."""
    stmt = (
        select(Subscription)
        .where(Subscription.id == subscription_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def subscription_by_token_for_update(session: AsyncSession, token: str) -> Subscription | None:
    """Lock the subscription a link names while it changes, so concurrent clicks record one event."""
    stmt = (
        select(Subscription)
        .where(Subscription.token == token)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def subscription_by_token_casefold(session: AsyncSession, token: str) -> Subscription | None:
    """Mail to unsub+TOKEN@ may arrive case-folded by an MTA; only a unique match counts."""
    stmt = select(Subscription).where(func.lower(Subscription.token) == token.lower()).limit(2)
    found = (await session.execute(stmt)).scalars().all()
    return found[0] if len(found) == 1 else None


async def subscriber_by_id(session: AsyncSession, subscriber_id: int) -> Subscriber | None:
    """The reader behind a subscription (for the address and global status)."""
    return await session.get(Subscriber, subscriber_id)


async def last_confirmation_sent(session: AsyncSession, sub: Subscription) -> datetime | None:
    """When this signup was last mailed a confirmation: at most one per address and list a day
    while it is unanswered. A signup that starts afresh (the reader left and signs up again)
    starts a new count, so a returning reader is not locked out by the link they already used."""
    stmt = select(func.max(Event.created_at)).where(
        Event.subscription_id == sub.id,
        Event.kind == "confirmation_sent",
        Event.created_at >= sub.signup_at,
    )
    found: datetime | None = (await session.execute(stmt)).scalar_one_or_none()
    return found


async def confirmations_since(session: AsyncSession, since: datetime) -> int:
    """Confirmation emails queued since a time, for the global hourly budget against list bombing
    (one email covers several lists; welcome mails, which only a confirmation leads to, do not count)."""
    stmt = select(func.count(func.distinct(Event.delivery_id))).where(
        Event.kind == "confirmation_sent", Event.created_at >= since
    )
    return int((await session.execute(stmt)).scalar_one())


async def delete_pending_before(session: AsyncSession, before: datetime) -> int:
    """Signups nobody confirmed within the grace period are deleted, not kept as unconsented data."""
    stmt = delete(Subscription).where(
        Subscription.status == SubscriptionStatus.PENDING, Subscription.signup_at < before
    )
    return int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def delete_readers_without_history(session: AsyncSession) -> int:
    """Addresses left with no subscription and nothing on record that must be kept (consent, bounces)."""
    has_subscription = select(Subscription.id).where(Subscription.subscriber_id == Subscriber.id).exists()
    has_history = (
        select(Event.id)
        .where(
            Event.subscriber_id == Subscriber.id,
            Event.kind.in_(
                [
                    "confirmed",
                    "unsubscribed",
                    "bounced",
                    "complained",
                    "suppressed",
                    "unsuppressed",
                    "policy_rejection",
                ]
            ),
        )
        .exists()
    )
    stmt = delete(Subscriber).where(~has_subscription, ~has_history)
    return int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def start_subscription(
    session: AsyncSession,
    subscriber_id: int,
    list_id: int,
    sub: Subscription | None,
    token: str,
    values: Mapping[str, Any],
) -> Subscription:
    """A new subscription (with `token`), or an ended one started afresh (keeping its token and
    watermark), with the given column values."""
    if sub is None:
        sub = Subscription(subscriber_id=subscriber_id, list_id=list_id, token=token, watermark=0)
        session.add(sub)
    for column, value in values.items():
        setattr(sub, column, value)
    await session.flush()
    return sub


async def confirm_subscription(
    session: AsyncSession,
    sub: Subscription,
    now: datetime,
    next_due: datetime,
    *,
    link: tuple[str | None, str | None] | None = None,
) -> None:
    """Mark a pending subscription confirmed; `link` is the (ip, user agent) that followed the
    confirmation link, kept as proof of consent."""
    sub.status, sub.confirmed_at, sub.next_due_at = SubscriptionStatus.CONFIRMED, now, next_due
    if link is not None:
        sub.confirm_ip, sub.confirm_user_agent = link


async def end_subscription(session: AsyncSession, sub: Subscription, method: str, now: datetime) -> None:
    """The reader left the list: no next slot until they come back."""
    sub.status, sub.unsubscribed_at, sub.unsubscribe_method, sub.next_due_at = (
        SubscriptionStatus.UNSUBSCRIBED,
        now,
        method,
        None,
    )


async def set_subscription_schedule(
    session: AsyncSession,
    sub: Subscription,
    cadence: str,
    weekday: int | None,
    send_hour: int | None,
    timezone: str | None,
    next_due: datetime,
) -> None:
    """A reader's own cadence and local send time, and the next slot it gives."""
    sub.cadence, sub.weekday, sub.send_hour, sub.timezone = cadence, weekday, send_hour, timezone
    sub.next_due_at = next_due


async def rename_subscriber(session: AsyncSession, reader: Subscriber, name: str, now: datetime) -> None:
    reader.name, reader.updated_at = name, now


async def restore_subscription(session: AsyncSession, sub: Subscription, next_due: datetime) -> None:
    """A reader who had confirmed and left comes back: confirmed again, from their next slot, with
    their consent record and watermark as they were."""
    sub.status, sub.unsubscribed_at, sub.unsubscribe_method, sub.next_due_at = (
        SubscriptionStatus.CONFIRMED,
        None,
        None,
        next_due,
    )
