"""Readers' operations: addresses, preferences, consent, subscribing and leaving.

Every function takes `now` from its caller, so the CLI's `tick --once --now` and the tests drive
time explicitly.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import getaddresses
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo

from email_validator import EmailNotValidError, validate_email
from sqlalchemy.ext.asyncio import AsyncSession

from digest import bootstrap, schedule, tokens
from digest.bootstrap import App
from digest.errors import AddressError, UsageError
from digest.models import (
    Cadence,
    MailingList,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)
from digest.store import ledger
from digest.store import readers as readers_store
from digest.store import retention as retention_store


def normalize_address(address: str) -> tuple[str, str]:
    """(address as stored, lookup key); AddressError says what is wrong with it."""
    raw = address.strip()
    if not raw:
        raise AddressError("the email address is empty")
    if any(c in raw for c in "\r\n,\x00") or len(raw) > 254:
        raise AddressError(f"{raw[:60]!r} is not a single email address")
    try:
        normalized = validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise AddressError(f"{raw[:60]!r} is not a valid email address: {exc}") from None
    return normalized, normalized.casefold()


log = logging.getLogger("digest")


@lru_cache(maxsize=4096)
def parsed_cron(expr: str) -> schedule.Cron:
    return schedule.parse_cron(expr)


class Scheduled(Protocol):
    """What a reader's slots depend on: a subscription row, or preferences not yet stored."""

    @property
    def cadence(self) -> str: ...
    @property
    def weekday(self) -> int | None: ...
    @property
    def send_hour(self) -> int | None: ...
    @property
    def timezone(self) -> str | None: ...


def reader_schedule(sub: Scheduled, lst: MailingList) -> tuple[str, str]:
    """(cron expression, time zone) of one reader's slots."""
    expr = schedule.cadence_cron(sub.cadence, sub.send_hour, sub.weekday, lst.schedule)
    tz = lst.timezone if sub.cadence == Cadence.DEFAULT or not sub.timezone else sub.timezone
    return expr, tz


def next_slot(sub: Scheduled, lst: MailingList, after: datetime) -> datetime:
    expr, tz = reader_schedule(sub, lst)
    return schedule.next_due(parsed_cron(expr), ZoneInfo(tz), after)


@dataclass(frozen=True)
class ReaderPrefs:
    name: str = ""
    cadence: str = Cadence.DEFAULT
    weekday: int | None = None
    send_hour: int | None = None
    timezone: str | None = None
    topics: str | None = None  # the stored topic choice (topics.parse_choice); None: every topic


def validate_prefs(prefs: ReaderPrefs) -> ReaderPrefs:
    if prefs.cadence not in {c.value for c in Cadence}:
        raise UsageError(f"cadence must be default, daily or weekly, not {prefs.cadence!r}")
    if prefs.send_hour is not None and not 0 <= prefs.send_hour <= 23:
        raise UsageError(f"send hour must be 0-23, not {prefs.send_hour}")
    if prefs.weekday is not None and not 0 <= prefs.weekday <= 6:
        raise UsageError("weekday must be one of mon, tue, wed, thu, fri, sat, sun")
    if prefs.cadence != Cadence.DEFAULT and prefs.send_hour is None:
        raise UsageError(f"cadence {prefs.cadence} needs a send hour (--hour)")
    if prefs.cadence == Cadence.WEEKLY and prefs.weekday is None:
        raise UsageError("cadence weekly needs a weekday (--weekday)")
    if prefs.timezone:
        try:
            ZoneInfo(prefs.timezone)
        except (KeyError, ValueError):
            raise UsageError(
                f"unknown time zone {prefs.timezone!r} (use an IANA name such as Europe/Berlin)"
            ) from None
    return prefs


@dataclass(frozen=True)
class Consent:
    ip: str | None = None
    user_agent: str | None = None
    source: str | None = None
    referer: str | None = None
    text_version: str | None = None


@dataclass(frozen=True)
class AddResult:
    subscription_id: int
    created: bool
    changed: bool


async def add_subscription(
    s: AsyncSession,
    lst: MailingList,
    address: str,
    prefs: ReaderPrefs,
    *,
    confirmed: bool,
    now: datetime,
    consent: Consent = Consent(),
    method: str = "operator",
) -> AddResult:
    """Subscribe one reader to one list (idempotent: an existing subscription is left as it is,
    except that `confirmed` confirms a pending one)."""
    email, key = normalize_address(address)
    prefs = validate_prefs(prefs)
    # An address erased on the reader's request comes back only through the reader (double opt-in).
    if (
        method in ("operator", "import", "api")
        and await readers_store.subscriber_by_email(s, key) is None
        and await retention_store.erased_reader(s, key)
    ):
        raise AddressError(f"{email} was erased on request: only the reader can subscribe again")
    subscriber, _ = await readers_store.get_or_create_subscriber(s, email, key, prefs.name, now)
    sub = await readers_store.subscription_for(s, subscriber.id, lst.id)
    if sub is not None and sub.status != SubscriptionStatus.UNSUBSCRIBED:
        if confirmed and sub.status == SubscriptionStatus.PENDING:
            await readers_store.confirm_subscription(s, sub, now, next_slot(sub, lst, now))
            await readers_store.add_event(
                s, "confirmed", now, subscriber_id=subscriber.id, subscription_id=sub.id, method=method
            )
            return AddResult(sub.id, False, True)
        return AddResult(sub.id, False, False)
    created = sub is None
    sub = await readers_store.start_subscription(
        s,
        subscriber.id,
        lst.id,
        sub,
        tokens.new_subscription_token(),
        {
            "status": SubscriptionStatus.CONFIRMED if confirmed else SubscriptionStatus.PENDING,
            "cadence": prefs.cadence,
            "weekday": prefs.weekday,
            "send_hour": prefs.send_hour,
            "timezone": prefs.timezone,
            "topics": prefs.topics,
            "signup_at": now,
            "signup_ip": consent.ip,
            "signup_user_agent": consent.user_agent,
            "signup_source": consent.source,
            "signup_referer": consent.referer,
            "consent_text_version": consent.text_version,
            "unsubscribed_at": None,
            "unsubscribe_method": None,
            "confirmed_at": now if confirmed else None,
            "next_due_at": next_slot(prefs, lst, now) if confirmed else None,
        },
    )
    if prefs.name and not subscriber.name:
        await readers_store.rename_subscriber(s, subscriber, prefs.name, now)
    await readers_store.add_event(
        s,
        "subscribed",
        now,
        subscriber_id=subscriber.id,
        subscription_id=sub.id,
        list=lst.slug,
        method=method,
        ip=consent.ip,
        source=consent.source,
        topics=prefs.topics.split(",") if prefs.topics else "all",
    )
    if confirmed:
        await readers_store.add_event(
            s, "confirmed", now, subscriber_id=subscriber.id, subscription_id=sub.id, method=method
        )
    return AddResult(sub.id, created, True)


async def unsubscribe(s: AsyncSession, sub: Subscription, method: str, now: datetime) -> bool:
    """Leave a list at once: outstanding deliveries to this reader are skipped. Idempotent."""
    if sub.status == SubscriptionStatus.UNSUBSCRIBED:
        return False
    await readers_store.end_subscription(s, sub, method, now)
    await ledger.skip_outstanding(s, sub.id, now, "reader unsubscribed")
    await readers_store.add_event(
        s, "unsubscribed", now, subscriber_id=sub.subscriber_id, subscription_id=sub.id, method=method
    )
    return True


async def reader_subscription(app: App, lst: MailingList, address: str) -> tuple[Subscription, Subscriber]:
    _, key = normalize_address(address)
    async with app.db.read() as s:
        reader = await readers_store.subscriber_by_email(s, key)
        sub = await readers_store.subscription_for(s, reader.id, lst.id) if reader else None
    if reader is None or sub is None:
        raise UsageError(f"{address} is not subscribed to {lst.slug}")
    return sub, reader


# Mail to unsub+TOKEN@ (RFC 2369 mailto unsubscribe).
_UNSUB_LOCAL = re.compile(r"^unsub\+([A-Za-z0-9_-]{20,100})$", re.IGNORECASE)


async def handle_unsubscribe_mail(
    app: bootstrap.App, raw: bytes, envelope_rcpt: str | None, now: datetime | None = None
) -> str:
    """Unsubscribe the reader a message to `unsub+TOKEN@…` names. Never replies to anything.

    The envelope recipient decides; without one (a mailbox file), Delivered-To, X-Original-To and
    To are tried in that order. Returns "unsubscribed", "already", "unknown" or "not-unsubscribe".
    """
    now = now or bootstrap.utcnow()
    candidates = [envelope_rcpt] if envelope_rcpt else []
    if not candidates:
        msg = email.message_from_bytes(raw[:65536], policy=email.policy.compat32)
        for name in ("Delivered-To", "X-Original-To", "Envelope-to", "To"):
            candidates += [addr for _, addr in getaddresses([str(v) for v in msg.get_all(name, [])])]
    token = None
    for candidate in candidates:
        local = candidate.strip().strip("<>").rpartition("@")[0]
        m = _UNSUB_LOCAL.match(local)
        if m:
            token = m.group(1)
            break
    if token is None:
        return "not-unsubscribe"
    async with app.db.write() as s:
        sub = await readers_store.subscription_by_token_for_update(s, token)
        if sub is None:
            # Some MTAs fold the case of local parts; the token is long enough to match without it.
            sub = await readers_store.subscription_by_token_casefold(s, token)
        if sub is None:
            log.info("mail to an unknown unsubscribe address ignored")
            return "unknown"
        changed = await unsubscribe(s, sub, "mailto", now)
    return "unsubscribed" if changed else "already"
