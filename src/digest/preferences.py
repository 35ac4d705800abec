"""The reader's own page, reached by their subscription token: preferences, leaving one list or all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from digest import bootstrap, readers, schedule, topics
from digest.models import MailingList, Subscription, SubscriptionStatus
from digest.signup import request_confirmation
from digest.signup_form import Signup
from digest.store import readers as readers_store
from digest.store import reports as reports_store


@dataclass(frozen=True)
class Reader:
    """Everything the preferences page shows, found from one subscription's token."""

    token: str
    email: str
    name: str
    prefs: readers.ReaderPrefs
    subscribed: tuple[str, ...]  # confirmed list slugs
    pending: tuple[str, ...]
    topics: Mapping[str, str | None] = field(default_factory=dict)  # list slug → topic choice


async def reader_for_token(app: bootstrap.App, token: str) -> Reader | None:
    async with app.db.read() as s:
        sub = await readers_store.subscription_by_token(s, token)
        reader = await readers_store.subscriber_by_id(s, sub.subscriber_id) if sub else None
        if sub is None or reader is None:
            return None
        subs = await readers_store.subscriptions_of(s, reader.id)
    prefs = readers.ReaderPrefs(
        name=reader.name,
        cadence=sub.cadence,
        weekday=sub.weekday,
        send_hour=sub.send_hour,
        timezone=sub.timezone,
    )
    return Reader(
        token=token,
        email=reader.email,
        name=reader.name,
        prefs=prefs,
        subscribed=tuple(lst.slug for x, lst in subs if x.status == SubscriptionStatus.CONFIRMED),
        pending=tuple(lst.slug for x, lst in subs if x.status == SubscriptionStatus.PENDING),
        topics={lst.slug: x.topics for x, lst in subs},
    )


@dataclass
class PrefsOutcome:
    changed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    back: list[str] = field(default_factory=list)  # lists the reader had confirmed and rejoined at once
    confirmation_for: list[str] = field(default_factory=list)
    # Lists still awaiting the confirmation mailed less than a day ago (its link still works).
    waiting: list[tuple[str, datetime]] = field(default_factory=list)


class _LastDigest(readers.Scheduled, Protocol):
    @property
    def last_digest_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class _Proposed:
    """A subscription's schedule as the form would change it, before it is stored."""

    cadence: str
    weekday: int | None
    send_hour: int | None
    timezone: str | None
    last_digest_at: datetime | None


def _same_day_floor(sub: _LastDigest, lst: MailingList, now: datetime) -> datetime:
    """Slots are looked for after this: never a second digest on the local day of the last one."""
    _, tz = readers.reader_schedule(sub, lst)
    zone = ZoneInfo(tz)
    today = now.astimezone(zone).date()
    if sub.last_digest_at is not None and sub.last_digest_at.astimezone(zone).date() >= today:
        midnight = schedule.resolve_local(
            datetime.combine(today + timedelta(days=1), datetime.min.time()), zone
        )
        return max(now, midnight - timedelta(microseconds=1))
    return now


async def change_preferences(
    app: bootstrap.App,
    token: str,
    wanted: Sequence[str],
    prefs: readers.ReaderPrefs,
    now: datetime,
    *,
    consent: readers.Consent,
    hourly_budget: int | None = None,
    chosen_topics: Mapping[str, str | None] | None = None,
) -> PrefsOutcome | None:
    """Apply the preferences form: new schedule, topics and name, lists left, lists joined (double
    opt-in). `chosen_topics` (list slug → choice; absent: every topic) applies to lists with topics."""
    prefs = readers.validate_prefs(prefs)
    outcome = PrefsOutcome()
    async with app.db.write() as s:
        base = await readers_store.subscription_by_token_for_update(s, token)
        reader = await readers_store.subscriber_by_id(s, base.subscriber_id) if base else None
        if base is None or reader is None:
            return None
        if prefs.name != reader.name:
            await readers_store.add_event(
                s, "preferences_changed", now, subscriber_id=reader.id, name=[reader.name, prefs.name]
            )
            await readers_store.rename_subscriber(s, reader, prefs.name, now)
        current = await readers_store.subscriptions_of(s, reader.id)
        offering = {c.slug for c in app.cfg.lists if c.topics}
        have = {lst.slug for sub, lst in current if sub.status == SubscriptionStatus.CONFIRMED}
        for sub, lst in current:
            if sub.status != SubscriptionStatus.CONFIRMED:
                continue
            if lst.slug not in wanted:
                await readers.unsubscribe(s, sub, "preferences", now)
                outcome.left.append(lst.slug)
                continue
            if (
                chosen_topics is not None
                and lst.slug in offering
                and sub.topics != chosen_topics.get(lst.slug)
            ):
                await topics.record_choice(s, sub.id, chosen_topics.get(lst.slug), now, "preferences")
                outcome.changed.append(lst.slug)
            before = (sub.cadence, sub.weekday, sub.send_hour, sub.timezone)
            after = (prefs.cadence, prefs.weekday, prefs.send_hour, prefs.timezone)
            if before == after:
                continue
            floor = _same_day_floor(_Proposed(*after, last_digest_at=sub.last_digest_at), lst, now)
            next_due = readers.next_slot(prefs, lst, floor)
            await readers_store.set_subscription_schedule(s, sub, *after, next_due)
            await readers_store.add_event(
                s,
                "preferences_changed",
                now,
                subscriber_id=reader.id,
                subscription_id=sub.id,
                cadence=sub.cadence,
                weekday=sub.weekday,
                send_hour=sub.send_hour,
                timezone=sub.timezone,
                next_due_at=next_due.isoformat(),
            )
            outcome.changed.append(lst.slug)
        address = reader.email
    joining = tuple(slug for slug in wanted if slug not in have)
    # A list this reader confirmed before takes them back at once: following their own link
    # proves the mailbox, as the confirmation did. Lists new to them are confirmed by mail first.
    outcome.back = await _rejoin(app, token, joining, now, consent)
    asking = tuple(slug for slug in joining if slug not in outcome.back)
    if asking:
        signup = Signup(address, asking, replace(prefs, name=""), consent, dict(chosen_topics or {}))
        done = await request_confirmation(app, signup, now, method="preferences", hourly_budget=hourly_budget)
        outcome.confirmation_for = done.mailed
        outcome.waiting = done.waiting
    return outcome


async def _rejoin(
    app: bootstrap.App, token: str, slugs: Sequence[str], now: datetime, consent: readers.Consent
) -> list[str]:
    """Of `slugs`, the lists this reader had confirmed and left, restored; their slugs."""
    back: list[str] = []
    async with app.db.write() as s:
        base = await readers_store.subscription_by_token_for_update(s, token)
        reader = await readers_store.subscriber_by_id(s, base.subscriber_id) if base else None
        if base is None or reader is None or reader.status != "active":
            return back
        for sub, lst in await readers_store.subscriptions_of(s, reader.id):
            if lst.slug in slugs and lst.active and await _restore(s, sub, lst, now, consent):
                back.append(lst.slug)
    return back


async def _restore(
    s: AsyncSession, sub: Subscription, lst: MailingList, now: datetime, consent: readers.Consent
) -> bool:
    if sub.status != SubscriptionStatus.UNSUBSCRIBED or sub.confirmed_at is None:
        return False
    await readers_store.restore_subscription(s, sub, readers.next_slot(sub, lst, now))
    await readers_store.add_event(
        s,
        "resubscribed",
        now,
        subscriber_id=sub.subscriber_id,
        subscription_id=sub.id,
        list=lst.slug,
        ip=consent.ip,
        user_agent=consent.user_agent,
        consent_text_version=consent.text_version,
    )
    return True


async def resubscribe_token(
    app: bootstrap.App, token: str, now: datetime, consent: readers.Consent
) -> tuple[str, str] | None:
    """Come back to the token's list from its unsubscribe page: (list name, what happened), or None
    for an unknown token. What happened is "back" (at once: the reader had confirmed the list);
    else a confirmation was "mailed", or one mailed less than a day ago is still "waiting", or
    "refused" (the address bounced or was suppressed)."""
    async with app.db.write() as s:
        sub = await readers_store.subscription_by_token_for_update(s, token)
        lst = await reports_store.list_by_id(s, sub.list_id) if sub else None
        reader = await readers_store.subscriber_by_id(s, sub.subscriber_id) if sub else None
        if sub is None or lst is None or reader is None:
            return None
        if sub.status == SubscriptionStatus.CONFIRMED:
            return lst.name, "back"
        if reader.status == "active" and await _restore(s, sub, lst, now, consent):
            return lst.name, "back"
        address, slug = reader.email, lst.slug
    signup = Signup(address, (slug,), readers.ReaderPrefs(), consent)
    done = await request_confirmation(app, signup, now, method="resubscribe", hourly_budget=None)
    return lst.name, "mailed" if done.mailed else "waiting" if done.waiting else "refused"


async def unsubscribe_token(app: bootstrap.App, token: str, method: str, now: datetime) -> str | None:
    """Leave the token's list; the list's name, or None for an unknown token. Idempotent."""
    async with app.db.write() as s:
        sub = await readers_store.subscription_by_token_for_update(s, token)
        lst = await reports_store.list_by_id(s, sub.list_id) if sub else None
        if sub is None or lst is None:
            return None
        await readers.unsubscribe(s, sub, method, now)
        return lst.name


async def leave_everything(app: bootstrap.App, token: str, now: datetime) -> list[str] | None:
    """Unsubscribe the token's reader from every list; None for an unknown token."""
    async with app.db.write() as s:
        base = await readers_store.subscription_by_token_for_update(s, token)
        if base is None:
            return None
        left = []
        for sub, lst in await readers_store.subscriptions_of(s, base.subscriber_id):
            if sub.status != SubscriptionStatus.UNSUBSCRIBED:
                await readers.unsubscribe(s, sub, "link", now)
                left.append(lst.name)
        return left
