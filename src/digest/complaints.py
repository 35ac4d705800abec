"""Complaints (ARF, JMRP, provider notices) and complaint rates (STANDARDS item 23).

A complaint marks the reader `complained` (suppressed), unsubscribes the subscription it names
(method `complaint`), and is linked to its delivery; one that names only a subscription token is
linked to that reader's latest digest that arrived (`attributed` in the detail).

Complaint rates, per edition: complaints / its delivered messages. Per sending day: complaints
about the digests sent that UTC day / digests delivered that day. At the warning threshold a
WARNING is logged and an operator alert raised; at the pause threshold the edition (per edition)
or every edition still sending (per day) is paused and an `ALERT` is logged at CRITICAL, in the
transaction that records the complaint.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from digest import bounce_rules, readers
from digest.alerting import Alert, raise_alert
from digest.bounce_outcomes import BouncePolicy, Handled, Inbound, raw_detail, remember
from digest.models import Delivery, EditionStatus, SubscriberStatus, SubscriptionStatus
from digest.store import inbound as inbound_store
from digest.store import ledger
from digest.store import readers as readers_store
from digest.store import reports as reports_store

# The whole bounce pipeline logs under one name, the one operators filter and set levels by.
log = logging.getLogger("digest.bounces")


async def apply_complaint(s: AsyncSession, message: Inbound, now: datetime, policy: BouncePolicy) -> Handled:
    """A complaint: the reader is suppressed (complained) and unsubscribed from the list the
    message names, linked to its delivery (or the reader's latest digest for a token-only one);
    then the complaint rates are checked."""
    verdict, key, raw = message.verdict, message.key, message.raw
    await remember(s, key, "complaint", now)
    d: Delivery | None = None
    sub = None
    if verdict.delivery_id is not None:
        found = await ledger.load_claimed(s, [verdict.delivery_id])
        if found:
            d, sub = found[0].delivery, found[0].subscription
    if sub is None and verdict.token:
        sub = await readers_store.subscription_by_token(s, verdict.token)
        if sub is None:
            sub = await readers_store.subscription_by_token_casefold(s, verdict.token)
    if sub is None:
        log.warning("inbound: complaint about a message we cannot find: %s", verdict.reason)
        return Handled("unknown_delivery", "names no known delivery or reader", verdict.delivery_id)
    attributed = False
    if d is None:
        d = await inbound_store.last_sent_delivery(s, sub.id)
        attributed = d is not None
    reader = await readers_store.subscriber_by_id(s, sub.subscriber_id)
    if reader is None:
        return Handled("unknown_delivery", "the reader was erased", verdict.delivery_id)
    await readers_store.add_event(
        s,
        "complained",
        now,
        subscriber_id=reader.id,
        subscription_id=sub.id,
        delivery_id=d.id if d else None,
        reason=verdict.reason[:500],
        attributed=attributed,
        edition_id=d.edition_id if d else None,
        **raw_detail(raw, policy),
    )
    suppressed = False
    if reader.status not in (SubscriberStatus.COMPLAINED, SubscriberStatus.SUPPRESSED):
        await ledger.suppress_subscriber(
            s, reader.id, SubscriberStatus.COMPLAINED, now, f"spam complaint: {verdict.reason}"
        )
        suppressed = True
    if sub.status != SubscriptionStatus.UNSUBSCRIBED:
        await readers.unsubscribe(s, sub, "complaint", now)
    paused = await check_complaint_rates(s, d, now, policy.complaint_warn, policy.complaint_pause)
    log.warning("inbound: spam complaint from reader %s (delivery %s)", reader.id, d.id if d else "-")
    return Handled("complaint", verdict.reason, d.id if d else None, suppressed, False, tuple(paused))


async def check_complaint_rates(
    s: AsyncSession, d: Delivery | None, now: datetime, warn: float, pause: float
) -> list[int]:
    """STANDARDS item 23: warn, or pause and alert, on the edition's and the sending day's rate;
    returns the editions it paused."""
    paused: list[int] = []
    if d is not None and d.edition_id is not None:
        complaints, delivered = await inbound_store.edition_complaint_counts(s, d.edition_id)
        rate = bounce_rules.complaint_rate(complaints, delivered)
        action = bounce_rules.complaint_action(rate, warn, pause)
        what = f"edition {d.edition_id}: {complaints} complaint(s) / {delivered} delivered = {rate:.3%}"
        if action == "pause":
            edition = await reports_store.edition_by_id(s, d.edition_id)
            if edition is not None and edition.status == EditionStatus.SENDING:
                reason = f"complaint rate {rate:.3%} reached {pause:.3%}"
                await ledger.pause_edition(s, d.edition_id, reason, now)
                paused.append(d.edition_id)
                _complaint_alert("complaint rate too high, edition paused", what, now)
            else:
                _complaint_alert("complaint rate too high (edition no longer sending)", what, now)
        elif action == "warn":
            _complaint_warning(f"complaint rate above {warn * 100:.3f}%: {what}", now)
    day = (d.sent_at if d is not None and d.sent_at is not None else now).astimezone(UTC)
    start = day.replace(hour=0, minute=0, second=0, microsecond=0)
    complaints, delivered = await inbound_store.sent_day_complaint_counts(s, start, start + timedelta(days=1))
    if complaints:
        rate = bounce_rules.complaint_rate(complaints, delivered)
        action = bounce_rules.complaint_action(rate, warn, pause)
        what = f"sent {start:%Y-%m-%d}: {complaints} complaint(s) / {delivered} delivered = {rate:.3%}"
        if action == "pause":
            editions = await inbound_store.sending_editions(s)
            for edition_id in editions:
                await ledger.pause_edition(s, edition_id, f"daily complaint rate {rate:.3%}", now)
                if edition_id not in paused:
                    paused.append(edition_id)
            done = f"paused editions {', '.join(map(str, editions))}" if editions else "no edition is sending"
            _complaint_alert(f"daily complaint rate too high ({done})", what, now)
        elif action == "warn":
            _complaint_warning(f"daily complaint rate above {warn * 100:.3f}%: {what}", now)
    return paused


def _complaint_alert(title: str, what: str, now: datetime) -> None:
    log.critical("ALERT: %s: %s", title, what)
    raise_alert(Alert("complaint_rate", title, f"{title}: {what}", now))


def _complaint_warning(message: str, now: datetime) -> None:
    log.warning("%s", message)
    raise_alert(Alert("complaint_warning", "complaint rate above the warning threshold", message, now))
