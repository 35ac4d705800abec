"""The delivery ledger: claims and leases, outcomes, edition control and the queue."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from digest.models import (
    DUE_STATUSES_SQL,
    OUTSTANDING,
    Delivery,
    DeliveryStatus,
    Edition,
    EditionStatus,
    MailingList,
    Subscriber,
    Subscription,
)
from digest.store.readers import add_event, add_events

HELD_EDITIONS = (EditionStatus.PAUSED, EditionStatus.CANCELLED)


async def claim_deliveries(
    session: AsyncSession,
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    lease_now: datetime | None = None,
    kinds: Sequence[str] | None = None,
) -> list[int]:
    """Lease up to `limit` due deliveries (of `kinds`, or every kind); SKIP LOCKED lets workers on
    PostgreSQL share the queue.

    `now` decides what is due; `lease_now` (the database clock, see db_now) dates the lease.
    """
    due = (
        select(Delivery.id)
        .where(
            text(f"deliveries.{DUE_STATUSES_SQL}"),  # literal, so ix_deliveries_due serves the order
            Delivery.next_attempt_at <= now,
            ~select(Edition.id)
            .where(Edition.id == Delivery.edition_id, Edition.status.in_(list(HELD_EDITIONS)))
            .exists(),
            true() if kinds is None else Delivery.kind.in_(list(kinds)),
        )
        .order_by(Delivery.priority, Delivery.next_attempt_at, Delivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(Delivery)
        .where(Delivery.id.in_(due.scalar_subquery()))
        .values(
            status=DeliveryStatus.SENDING,
            lease_owner=owner,
            lease_expires_at=(lease_now or now) + lease,
            updated_at=now,
        )
        .returning(Delivery.id)
    )
    return sorted(int(r) for r in (await session.execute(stmt)).scalars().all())


async def reap_expired_leases(session: AsyncSession, now: datetime) -> int:
    """Deliveries whose worker died go back to pending (they are resent with the same Message-ID)."""
    # SKIP LOCKED: a row another worker is finishing right now is not waited for (no deadlock
    # between the reaper's scan and that worker's update); it is not expired anyway.
    expired = (
        select(Delivery.id)
        .where(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_expires_at < now)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(Delivery)
        .where(Delivery.id.in_(expired.scalar_subquery()))
        .values(status=DeliveryStatus.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now)
    )
    return int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Claimed:
    delivery: Delivery
    subscription: Subscription | None
    subscriber: Subscriber | None
    edition: Edition | None
    mailing_list: MailingList | None


async def load_claimed(
    session: AsyncSession,
    ids: Sequence[int],
    editions: dict[int, tuple[Edition, MailingList | None]] | None = None,
) -> list[Claimed]:
    """Claimed deliveries with their reader, edition and list.

    Editions (whose rendered bodies are large) are loaded once per edition, not once per row:
    pass the same `editions` dict on every call to keep them across batches.
    """
    cache = {} if editions is None else editions
    stmt = (
        select(Delivery, Subscription, Subscriber)
        .outerjoin(Subscription, Subscription.id == Delivery.subscription_id)
        .outerjoin(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Delivery.id.in_(ids))
        .order_by(Delivery.id)
    )
    rows = (await session.execute(stmt)).all()
    missing = {d.edition_id for d, _, _ in rows if d.edition_id is not None and d.edition_id not in cache}
    if missing:
        found = await session.execute(
            select(Edition, MailingList)
            .outerjoin(MailingList, MailingList.id == Edition.list_id)
            .where(Edition.id.in_(missing))
        )
        for edition, lst in found.all():
            cache[edition.id] = (edition, lst)
    out = []
    for d, sub, reader in rows:
        pair = cache.get(d.edition_id) if d.edition_id is not None else None
        out.append(Claimed(d, sub, reader, pair[0] if pair else None, pair[1] if pair else None))
    return out


@dataclass(frozen=True)
class SendCheck:
    """What may have changed since a delivery was claimed, read just before it is sent."""

    held: bool  # still leased by this worker (not reaped, cancelled or finished elsewhere)
    edition_status: str | None
    subscription_status: str | None
    subscriber_status: str | None


async def send_checks(session: AsyncSession, owner: str, ids: Sequence[int]) -> dict[int, SendCheck]:
    """One read for a group of deliveries about to be sent: their lease, edition and reader now."""
    stmt = (
        select(Delivery.id, Delivery.lease_owner, Delivery.status, Edition.status, Subscription.status)
        .add_columns(Subscriber.status)
        .outerjoin(Edition, Edition.id == Delivery.edition_id)
        .outerjoin(Subscription, Subscription.id == Delivery.subscription_id)
        .outerjoin(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Delivery.id.in_(ids))
    )
    return {
        int(row[0]): SendCheck(row[1] == owner and row[2] == DeliveryStatus.SENDING, row[3], row[4], row[5])
        for row in (await session.execute(stmt)).all()
    }


async def finish_delivery(
    session: AsyncSession, delivery_id: int, owner: str, values: dict[str, Any]
) -> bool:
    """Record an outcome if this worker still holds the lease; False means someone else took it."""
    stmt = (
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.lease_owner == owner,
            Delivery.status == DeliveryStatus.SENDING,
        )
        .values(lease_owner=None, lease_expires_at=None, **values)
    )
    return bool((await session.execute(stmt)).rowcount == 1)  # type: ignore[attr-defined]


async def renew_leases(session: AsyncSession, owner: str, until: datetime) -> None:
    """Extend every lease this worker holds; a worker that stops renewing loses them to the reaper."""
    await session.execute(
        update(Delivery)
        .where(Delivery.lease_owner == owner, Delivery.status == DeliveryStatus.SENDING)
        .values(lease_expires_at=until)
    )


async def release_leases(session: AsyncSession, owner: str, ids: Sequence[int], now: datetime) -> None:
    """Give back claimed rows this worker did not get to (it is stopping)."""
    await session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids), Delivery.lease_owner == owner, Delivery.status == DeliveryStatus.SENDING)
        .values(status=DeliveryStatus.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now)
    )


async def cancel_claimed(
    session: AsyncSession, owner: str, ids: Sequence[int], now: datetime
) -> list[Delivery]:
    """Claimed rows of an edition cancelled since the claim: cancelled like its pending rows."""
    stmt = (
        update(Delivery)
        .where(Delivery.id.in_(ids), Delivery.lease_owner == owner, Delivery.status == DeliveryStatus.SENDING)
        .values(status=DeliveryStatus.CANCELLED, lease_owner=None, lease_expires_at=None, updated_at=now)
        .returning(Delivery)
    )
    return list((await session.execute(stmt)).scalars().all())


async def release_owner(session: AsyncSession, owner: str, now: datetime) -> int:
    """A stopping worker hands back every row it still holds, so nothing waits for a lease to expire."""
    stmt = (
        update(Delivery)
        .where(Delivery.lease_owner == owner, Delivery.status == DeliveryStatus.SENDING)
        .values(status=DeliveryStatus.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now)
    )
    return int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def pause_edition(session: AsyncSession, edition_id: int, reason: str, now: datetime) -> None:
    """Stop an edition; what its breaker deferred goes back to pending, to go out on resume."""
    await session.execute(
        update(Edition)
        .where(Edition.id == edition_id, Edition.status == EditionStatus.SENDING)
        .values(status=EditionStatus.PAUSED, pause_reason=reason[:1000])
    )
    await session.execute(
        update(Delivery)
        .where(Delivery.edition_id == edition_id, Delivery.status == DeliveryStatus.DEFERRED)
        .values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now, updated_at=now)
    )


async def hold_for_paused_editions(session: AsyncSession, ids: Sequence[int], now: datetime) -> None:
    """Deferred rows among `ids` whose edition is paused go back to pending, to go out on resume."""
    paused = select(Edition.id).where(Edition.status == EditionStatus.PAUSED)
    await session.execute(
        update(Delivery)
        .where(
            Delivery.id.in_(ids),
            Delivery.status == DeliveryStatus.DEFERRED,
            Delivery.edition_id.in_(paused.scalar_subquery()),
        )
        .values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now, updated_at=now)
    )


async def set_edition_status(
    session: AsyncSession, edition_id: int, status: str, reason: str | None, now: datetime
) -> bool:
    """Pause or resume an edition by hand; False when it does not exist. On resume, what was
    deferred while it was held (a breaker's in-flight policy refusals) goes out at once."""
    result = await session.execute(
        update(Edition).where(Edition.id == edition_id).values(status=status, pause_reason=reason)
    )
    if status == EditionStatus.SENDING:
        await session.execute(
            update(Delivery)
            .where(Delivery.edition_id == edition_id, Delivery.status == DeliveryStatus.DEFERRED)
            .values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now, updated_at=now)
        )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def cancel_edition(session: AsyncSession, edition_id: int, now: datetime) -> list[Delivery]:
    """Cancel what has not gone out; returns the cancelled digests so their watermarks roll back."""
    await session.execute(
        update(Edition).where(Edition.id == edition_id).values(status=EditionStatus.CANCELLED)
    )
    stmt = (
        update(Delivery)
        .where(
            Delivery.edition_id == edition_id,
            Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.DEFERRED]),
        )
        .values(status=DeliveryStatus.CANCELLED, updated_at=now)
        .returning(Delivery)
    )
    return list((await session.execute(stmt)).scalars().all())


async def requeue_unsent(session: AsyncSession, edition_id: int, include_unknown: bool, now: datetime) -> int:
    """Send again what never arrived (same Message-ID, so receivers can de-duplicate).

    A digest is requeued only while its reader's watermark still stands where this delivery
    left it (rolled back to from_seq, or at to_seq): a reader who has since had a newer digest
    holding these articles must not get them twice.
    """
    statuses = [DeliveryStatus.FAILED, DeliveryStatus.CANCELLED, DeliveryStatus.DEFERRED]
    if include_unknown:
        statuses.append(DeliveryStatus.UNKNOWN)
    rows = await session.execute(
        select(Delivery, Subscription.watermark)
        .outerjoin(Subscription, Subscription.id == Delivery.subscription_id)
        .where(Delivery.edition_id == edition_id, Delivery.status.in_(statuses))
    )
    requeued = 0
    for d, watermark in rows.all():
        if d.subscription_id is not None and d.from_seq is not None and d.to_seq is not None:
            if watermark not in (d.from_seq, d.to_seq):
                continue
            await rollback_watermark(session, d.subscription_id, d.to_seq, d.from_seq)
        d.status, d.attempts, d.next_attempt_at, d.created_at, d.updated_at = (
            DeliveryStatus.PENDING,
            0,
            now,
            now,
            now,
        )
        requeued += 1
    await session.execute(
        update(Edition)
        .where(Edition.id == edition_id)
        .values(status=EditionStatus.SENDING, pause_reason=None)
    )
    return requeued


async def suppress_subscriber(
    session: AsyncSession, subscriber_id: int, status: str, now: datetime, reason: str
) -> None:
    """Stop all mail to a reader (hard bounce, complaint, operator); the event says why."""
    await session.execute(
        update(Subscriber).where(Subscriber.id == subscriber_id).values(status=status, updated_at=now)
    )
    await add_event(
        session, "suppressed", now, subscriber_id=subscriber_id, status=status, reason=reason[:500]
    )


async def suppress_subscribers(
    session: AsyncSession, reasons: dict[int, str], status: str, now: datetime
) -> None:
    """Stop all mail to many readers at once (a mailbox of bounces): one statement, an event each.
    Core, not ORM: Subscriber objects already loaded in the session keep their old status."""
    if not reasons:
        return
    table = cast(Table, Subscriber.__table__)
    stmt = update(table).where(table.c.id == bindparam("reader")).values(status=status, updated_at=now)
    await session.execute(stmt, [{"reader": reader} for reader in reasons])
    events = [
        ("suppressed", {"subscriber_id": r, "status": status, "reason": why[:500]})
        for r, why in reasons.items()
    ]
    await add_events(session, events, now)


async def skip_outstanding(session: AsyncSession, subscription_id: int, now: datetime, reason: str) -> int:
    """A reader who left gets nothing more, even from an edition that is half sent.

    Rows being sent right now keep their lease; the worker re-checks the reader before sending.
    """
    stmt = (
        update(Delivery)
        .where(
            Delivery.subscription_id == subscription_id,
            Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.DEFERRED]),
        )
        .values(status=DeliveryStatus.SKIPPED, smtp_reply=reason, updated_at=now)
    )
    return int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def finish_deliveries(
    session: AsyncSession, owner: str, outcomes: Sequence[tuple[int, dict[str, Any]]]
) -> set[int]:
    """Record many outcomes in one statement per shape; returns the ids whose lease was lost.

    Only rows this worker still holds are written: a row whose lease expired and was taken by
    another worker keeps that worker's state (the message may go out twice; it is logged).
    """
    ids = [i for i, _ in outcomes]
    held = select(Delivery.id).where(
        Delivery.id.in_(ids), Delivery.lease_owner == owner, Delivery.status == DeliveryStatus.SENDING
    )
    mine = {int(i) for i in (await session.execute(held)).scalars()}
    table = cast(Table, Delivery.__table__)
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for delivery_id, values in sorted(outcomes, key=lambda o: o[0]):  # one lock order for every worker
        if delivery_id in mine:
            shapes.setdefault(tuple(sorted(values)), []).append(
                {"b_id": delivery_id, **{f"b_{k}": v for k, v in values.items()}}
            )
    for keys, params in shapes.items():
        stmt = (
            update(table)
            .where(
                table.c.id == bindparam("b_id"),
                table.c.lease_owner == owner,
                table.c.status == DeliveryStatus.SENDING,
            )
            .values({**{k: bindparam(f"b_{k}") for k in keys}, "lease_owner": None, "lease_expires_at": None})
        )
        await session.execute(stmt, params)
    return set(ids) - mine


async def rollback_watermark(session: AsyncSession, subscription_id: int, from_seq: int, to_seq: int) -> None:
    """Give a reader back the articles of a delivery that will never arrive."""
    await session.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id, Subscription.watermark == to_seq)
        .values(watermark=from_seq)
    )


async def pending_count(session: AsyncSession, now: datetime | None = None) -> int:
    stmt = select(func.count()).select_from(Delivery).where(Delivery.status.in_(list(OUTSTANDING)))
    if now is not None:
        stmt = stmt.where(
            or_(
                and_(Delivery.status != DeliveryStatus.SENDING, Delivery.next_attempt_at <= now),
                and_(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_expires_at < now),
            )
        )
    return int((await session.execute(stmt)).scalar_one())


async def add_edition(session: AsyncSession, edition: Edition) -> Edition:
    session.add(edition)
    await session.flush()
    return edition


async def set_edition_body(
    session: AsyncSession, edition: Edition, subject: str, html: str, text: str
) -> None:
    """An edition's rendered mail: rendered after the row exists, so its web link can name its id."""
    edition.subject, edition.html, edition.text = subject, html, text


async def finish_done_editions(session: AsyncSession) -> None:
    """An edition with nothing outstanding is done."""
    outstanding = (
        select(Delivery.id)
        .where(Delivery.edition_id == Edition.id, Delivery.status.in_(list(OUTSTANDING)))
        .exists()
    )
    await session.execute(
        update(Edition).where(Edition.status == "sending", ~outstanding).values(status="done")
    )
