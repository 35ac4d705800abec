"""What readers do without an operator: sign up, confirm, change preferences, leave; and the limits.

Double opt-in: a signup creates pending subscriptions and queues one confirmation email for all
the lists of the request (kind `transactional`, priority 0, so it goes ahead of digests); at most
one per address and list every 24 hours. The emailed link carries an itsdangerous token (salt
"confirm", signed by the first key, verified by all) naming the subscriptions and their signup
times, so a link from an earlier signup cannot confirm a later one. Confirm tokens expire after
48 hours; pending signups nobody confirmed are purged after 7 days.

Unsubscribe and preference links use the random per-subscription token instead: it never expires
and survives any rotation of the signing keys.
"""

from __future__ import annotations

import email
import email.policy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from sqlalchemy.exc import IntegrityError

from digest import bootstrap, messages, readers, rendering, views, welcome
from digest.alerting import Alert, raise_alert
from digest.models import MailingList, Subscription, SubscriptionStatus
from digest.signup_form import MAX_LISTS, TEXT_MAX, Signup, clean_text
from digest.store import compose as compose_store
from digest.store import readers as readers_store
from digest.store import reports as reports_store
from digest.store import sources as sources_store

log = logging.getLogger("digest")


CONFIRM_SALT = "confirm"


CONFIRM_MAX_AGE = timedelta(hours=48)


CONFIRM_EVERY = timedelta(hours=24)


PENDING_LIFETIME = timedelta(days=7)


RESEND_WITHIN = timedelta(days=7)  # an expired link offers a fresh one while the signup is still kept


def _serializer(keys: Sequence[str], now: datetime | None = None) -> URLSafeTimedSerializer:
    signer: type[TimestampSigner] = TimestampSigner
    if now is not None:
        signed_at = int(now.timestamp())

        class _SignedAt(TimestampSigner):  # the caller's clock, not the process's
            def get_timestamp(self) -> int:
                return signed_at

        signer = _SignedAt
    # itsdangerous signs with the last key of its list; ours signs with the first.
    return URLSafeTimedSerializer(list(reversed(keys)), salt=CONFIRM_SALT, signer=signer)


def _stamp(sub: Subscription) -> int:
    return int(sub.signup_at.timestamp())


def confirm_token(keys: Sequence[str], subs: Sequence[Subscription], now: datetime) -> str:
    """Opaque ids only: the subscriptions and when each was signed up for."""
    return _serializer(keys, now).dumps([[sub.id, _stamp(sub)] for sub in subs])


class TokenExpired(Exception):
    """The confirmation link is older than 48 hours; `pairs` still names what it was for."""

    def __init__(self, pairs: list[tuple[int, int]]) -> None:
        super().__init__("the confirmation link has expired")
        self.pairs = pairs


def read_confirm_token(
    keys: Sequence[str], token: str, now: datetime, max_age: timedelta = CONFIRM_MAX_AGE
) -> list[tuple[int, int]]:
    """The (subscription id, signup time) pairs of a token; BadSignature if forged, TokenExpired if old."""
    serializer = _serializer(keys)
    if len(token) > 2000:
        raise BadSignature("token too long")
    payload, signed_at = serializer.loads(token, return_timestamp=True)
    pairs = _pairs(payload)
    age = now - signed_at
    if age > max_age:
        raise TokenExpired(pairs)
    return pairs


def _pairs(payload: Any) -> list[tuple[int, int]]:
    if not isinstance(payload, list) or not 0 < len(payload) <= MAX_LISTS:
        raise BadSignature("unexpected payload")
    pairs = []
    for item in payload:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        ):
            raise BadSignature("unexpected payload")
        pairs.append((int(item[0]), int(item[1])))
    return pairs


@dataclass
class SignupResult:
    """What a signup did; only operators and tests see it, never the person signing up."""

    subscription_ids: list[int] = field(default_factory=list)
    mailed: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    # Lists still awaiting a confirmation mailed less than a day ago (its link still works), with when.
    waiting: list[tuple[str, datetime]] = field(default_factory=list)
    delivery_id: int | None = None


async def request_confirmation(
    app: bootstrap.App,
    signup: Signup,
    now: datetime,
    *,
    method: str,
    hourly_budget: int | None = None,
) -> SignupResult:
    """Subscribe as pending and queue one confirmation email for the lists that need one."""
    for attempt in (1, 2):
        try:
            return await _request_confirmation(app, signup, now, method=method, hourly_budget=hourly_budget)
        except IntegrityError:
            # Two requests for one new address raced to create it; the second try finds it.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _request_confirmation(
    app: bootstrap.App, signup: Signup, now: datetime, *, method: str, hourly_budget: int | None
) -> SignupResult:
    result = SignupResult()
    async with app.db.write() as s:
        asking: list[tuple[Subscription, MailingList]] = []
        for slug in signup.lists:
            lst = await sources_store.list_by_slug(s, slug)
            if lst is None or not lst.active:
                continue
            prefs = replace(signup.prefs, topics=signup.topics.get(slug))
            added = await readers.add_subscription(
                s, lst, signup.address, prefs, confirmed=False, now=now, consent=signup.consent,
                method=method,
            )  # fmt: skip
            sub = await readers_store.subscription_by_id(s, added.subscription_id)
            if sub is None:
                continue
            result.subscription_ids.append(sub.id)
            if sub.status == SubscriptionStatus.CONFIRMED:
                result.already.append(slug)
            else:
                asking.append((sub, lst))
        await ask_to_confirm(app, s, asking, now, hourly_budget, result)
    return result


async def ask_to_confirm(
    app: bootstrap.App,
    s: Any,
    pending: Sequence[tuple[Subscription, MailingList]],
    now: datetime,
    hourly_budget: int | None,
    result: SignupResult,
) -> None:
    """Queue one confirmation email for the pending subscriptions (of one reader) that may have one:
    at most one per signup and list a day while unanswered, never to a bounced or suppressed reader,
    and within the hourly budget. `result.mailed` and `result.waiting` say which lists got one."""
    to_confirm: list[tuple[Subscription, MailingList]] = []
    for sub, lst in pending:
        last = await readers_store.last_confirmation_sent(s, sub)
        if last is not None and now - last < CONFIRM_EVERY:
            result.waiting.append((lst.slug, last))
        else:
            to_confirm.append((sub, lst))
    if not to_confirm:
        return
    reader = await readers_store.subscriber_by_id(s, to_confirm[0][0].subscriber_id)
    if reader is None or reader.status != "active":
        return  # bounced, complained or suppressed: never mail them again
    if hourly_budget is not None:
        sent = await readers_store.confirmations_since(s, now - timedelta(hours=1))
        if sent >= hourly_budget:
            what = (
                f"{sent} confirmation emails in the last hour reached the budget of {hourly_budget}; "
                f"the signup of {reader.email} waits (possible list bombing)"
            )
            log.error("ALERT: %s", what)
            raise_alert(Alert("operator", what, what, now))
            return
    result.delivery_id = await _queue_confirmation(app, s, reader.email, to_confirm, now)
    for sub, lst in to_confirm:
        await readers_store.add_event(
            s,
            "confirmation_sent",
            now,
            subscriber_id=sub.subscriber_id,
            subscription_id=sub.id,
            delivery_id=result.delivery_id,
            list=lst.slug,
        )
        result.mailed.append(lst.slug)


def sender_name(app: bootstrap.App) -> str:
    name, _ = email.utils.parseaddr(app.cfg.sender.from_)
    return name or app.cfg.sender.domain


async def _queue_confirmation(
    app: bootstrap.App,
    s: Any,
    address: str,
    subs: Sequence[tuple[Subscription, MailingList]],
    now: datetime,
) -> int:
    token = confirm_token(app.keys, [sub for sub, _ in subs], now)
    rendered = rendering.render_confirmation(
        app.templates,
        views.ConfirmView(
            list_names=[lst.name for _, lst in subs],
            confirm_url=f"{app.base_url}/confirm/{token}",
            base_url=app.base_url,
            postal_address=app.cfg.sender.postal_address,
            sender_name=sender_name(app),
        ),
    )
    return await compose_store.insert_transactional(
        s,
        subscription_id=subs[0][0].id,
        address=address,
        message_id=messages.new_message_id(app.cfg.sender.domain),
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        now=now,
    )


@dataclass(frozen=True)
class Confirmed:
    lists: tuple[str, ...]  # names of the lists now confirmed (newly or before)
    token: str | None  # one subscription's token, for a link to the preferences page
    name: str = ""  # the reader's name, for the page's greeting
    welcomed: bool = False  # a welcome mail was queued (the lists were newly confirmed)


async def confirm(
    app: bootstrap.App,
    pairs: Sequence[tuple[int, int]],
    now: datetime,
    *,
    ip: str | None,
    user_agent: str | None,
) -> Confirmed:
    """Confirm the pending subscriptions a valid token names, and welcome the reader. Idempotent."""
    names: list[str] = []
    token, reader = None, None
    newly: list[tuple[Subscription, MailingList]] = []
    async with app.db.write() as s:
        for sub_id, stamp in pairs:
            sub = await readers_store.subscription_for_update(s, sub_id)
            if sub is None or _stamp(sub) != stamp:
                continue
            lst = await reports_store.list_by_id(s, sub.list_id)
            if lst is None or not lst.active:
                continue
            if sub.status == SubscriptionStatus.PENDING:
                agent = clean_text(user_agent or "", TEXT_MAX) or None
                await readers_store.confirm_subscription(
                    s, sub, now, readers.next_slot(sub, lst, now), link=(ip, agent)
                )
                await readers_store.add_event(
                    s,
                    "confirmed",
                    now,
                    subscriber_id=sub.subscriber_id,
                    subscription_id=sub.id,
                    method="link",
                    ip=ip,
                )
                newly.append((sub, lst))
            if sub.status == SubscriptionStatus.CONFIRMED:
                names.append(lst.name)
                token = token or sub.token
                reader = reader or await readers_store.subscriber_by_id(s, sub.subscriber_id)
        welcomed = None
        if reader is not None and newly:
            welcomed = await welcome.queue_welcome(app, s, reader, newly, now, sender=sender_name(app))
    return Confirmed(tuple(names), token, reader.name if reader else "", welcomed is not None)


async def resend_confirmation(
    app: bootstrap.App, pairs: Sequence[tuple[int, int]], now: datetime, *, hourly_budget: int | None
) -> SignupResult:
    """A fresh link for the still-pending subscriptions of an expired one (same 24-hour limit)."""
    async with app.db.read() as s:
        slugs, address = [], None
        for sub_id, stamp in pairs:
            sub = await readers_store.subscription_by_id(s, sub_id)
            if sub is None or _stamp(sub) != stamp or sub.status != SubscriptionStatus.PENDING:
                continue
            lst = await reports_store.list_by_id(s, sub.list_id)
            reader = await readers_store.subscriber_by_id(s, sub.subscriber_id)
            if lst is None or reader is None or (address and reader.email != address):
                continue
            address = reader.email
            slugs.append(lst.slug)
    if not slugs or address is None:
        return SignupResult()
    # Re-asking through the signup path keeps every rule in one place; a pending row is left as it is.
    signup = Signup(address, tuple(slugs), readers.ReaderPrefs(), readers.Consent())
    return await request_confirmation(app, signup, now, method="resend", hourly_budget=hourly_budget)


async def ask_pending(
    app: bootstrap.App, address: str, slugs: Sequence[str] | None, now: datetime
) -> SignupResult:
    """Mail a confirmation for a reader's pending subscriptions (all, or those of `slugs`) under the
    web's limits: what `subscribers add` and `import` do for readers added unconfirmed, and what
    `subscribers confirm-again` does when a reader lost the mail."""
    result = SignupResult()
    _, key = readers.normalize_address(address)
    async with app.db.write() as s:
        reader = await readers_store.subscriber_by_email(s, key)
        if reader is None:
            return result
        pending = [
            (sub, lst)
            for sub, lst in await readers_store.subscriptions_of(s, reader.id)
            if sub.status == SubscriptionStatus.PENDING
            and lst.active
            and (slugs is None or lst.slug in slugs)
        ]
        result.subscription_ids = [sub.id for sub, _ in pending]
        await ask_to_confirm(app, s, pending, now, None, result)
    return result


async def purge_stale_signups(
    app: bootstrap.App, now: datetime, older_than: timedelta = PENDING_LIFETIME
) -> int:
    """Forget signups nobody confirmed within a week (list bombing leaves nothing behind)."""
    async with app.db.write() as s:
        removed = await readers_store.delete_pending_before(s, now - older_than)
        await readers_store.delete_readers_without_history(s)
    if removed:
        log.info("purged %d unconfirmed signup(s) older than %s", removed, older_than)
    return removed
