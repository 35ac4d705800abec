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
import ipaddress
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.utils import getaddresses
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from sqlalchemy.exc import IntegrityError

from digest import messages, pipeline, rendering, schedule
from digest.errors import AddressError, UsageError
from digest.models import DeliveryKind, DeliveryStatus, MailingList, Subscription, SubscriptionStatus
from digest.store import compose, readers, reports, sources

log = logging.getLogger("digest")

CONFIRM_SALT = "confirm"
CONFIRM_MAX_AGE = timedelta(hours=48)
CONFIRM_EVERY = timedelta(hours=24)
PENDING_LIFETIME = timedelta(days=7)
RESEND_WITHIN = timedelta(days=7)  # an expired link offers a fresh one while the signup is still kept
MAX_LISTS = 20
NAME_MAX = 200
TEXT_MAX = 500

_BIDI_CONTROLS = {*range(0x202A, 0x202F), *range(0x2066, 0x206A)}
_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp", "Co", "Cn"})
_UNSUB_LOCAL = re.compile(r"^unsub\+([A-Za-z0-9_-]{20,100})$", re.IGNORECASE)
_TRUE = frozenset({"1", "true", "on", "yes", "y"})


# ---------------------------------------------------------------- input


def clean_text(value: str, max_len: int = TEXT_MAX) -> str:
    """One safe line: control, surrogate, separator and bidi-override characters dropped, spaces collapsed."""
    kept = (
        " " if unicodedata.category(ch) in _CONTROL_CATEGORIES else ch
        for ch in value
        if ord(ch) not in _BIDI_CONTROLS
    )
    return " ".join("".join(kept).split())[:max_len]


def clean_name(value: str) -> str:
    return clean_text(value, NAME_MAX)


def truthy(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in _TRUE


@dataclass(frozen=True)
class Signup:
    """A validated signup request: who, which lists, how often, and the consent record."""

    address: str
    lists: tuple[str, ...]
    prefs: pipeline.ReaderPrefs
    consent: pipeline.Consent


class SignupInvalid(UsageError):
    """A signup request has fields a reader must fix; `fields` maps each to its message."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.fields = dict(fields)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.fields.items()))


def _int_field(value: object, low: int, high: int, names: Sequence[str] = ()) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if text[:3] in names:
            return names.index(text[:3])
        text = text.split(":")[0]
        if not text.isdigit() or len(text) > 3:
            raise ValueError
        number = int(text)
    else:
        raise ValueError
    if not low <= number <= high:
        raise ValueError
    return number


def _str_field(value: object, max_len: int = TEXT_MAX) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError
    return clean_text(value, max_len)


def parse_signup(
    fields: Mapping[str, object],
    known_lists: Sequence[str],
    consent: pipeline.Consent,
    *,
    require_list: bool = True,
) -> Signup:
    """Validate raw form or JSON fields; SignupInvalid names every field that needs fixing."""
    errors: dict[str, str] = {}
    address = ""
    raw_email = fields.get("email")
    if not isinstance(raw_email, str) or not raw_email.strip():
        errors["email"] = "Enter your email address."
    elif any(unicodedata.category(ch) in ("Cs", "Cc") for ch in raw_email.strip()):
        errors["email"] = "Enter a single email address, such as ann@example.com."
    else:
        try:
            address, _ = pipeline.normalize_address(raw_email)
        except AddressError:
            errors["email"] = "Enter a valid email address, such as ann@example.com."
    name = ""
    try:
        name = clean_name(_str_field(fields.get("name"), 1000))
    except TypeError:
        errors["name"] = "The name must be text."
    raw_lists = fields.get("list")
    if raw_lists is None:
        raw_lists = fields.get("lists")
    if isinstance(raw_lists, str):
        raw_lists = [raw_lists]
    slugs: list[str] = []
    if not isinstance(raw_lists, list) or not all(isinstance(x, str) for x in raw_lists):
        errors["list"] = "Choose at least one list."
    else:
        for slug in raw_lists:
            if slug not in known_lists:
                errors["list"] = "Choose lists from this page."
            elif slug not in slugs:
                slugs.append(slug)
        if not slugs and require_list and "list" not in errors:
            errors["list"] = "Choose at least one list."
        if len(slugs) > MAX_LISTS:
            errors["list"] = f"Choose at most {MAX_LISTS} lists."
    cadence = fields.get("cadence") or "default"
    if cadence not in ("default", "daily", "weekly"):
        errors["cadence"] = "Choose how often: as the list sends, daily or weekly."
        cadence = "default"
    weekday = send_hour = None
    try:
        weekday = _int_field(fields.get("weekday"), 0, 6, schedule.WEEKDAYS)
    except (ValueError, TypeError):
        errors["weekday"] = "Choose a day of the week."
    try:
        send_hour = _int_field(fields.get("send_hour"), 0, 23)
    except (ValueError, TypeError):
        errors["send_hour"] = "Choose an hour from 0 to 23."
    timezone = None
    try:
        tz_text = _str_field(fields.get("timezone"), 64)
    except TypeError:
        tz_text = ""
        errors["timezone"] = "Enter a time zone such as Europe/Berlin."
    if tz_text:
        if valid_zone(tz_text):
            timezone = tz_text
        else:
            errors["timezone"] = "Enter a time zone such as Europe/Berlin."
    if cadence != "default" and send_hour is None and "send_hour" not in errors:
        errors["send_hour"] = "Choose the hour your digest should arrive."
    if cadence == "weekly" and weekday is None and "weekday" not in errors:
        errors["weekday"] = "Choose the day your weekly digest should arrive."
    if not truthy(fields.get("consent")):
        errors["consent"] = "Tick the box to agree, or we cannot send you anything."
    if errors:
        raise SignupInvalid(errors)
    if cadence == "default":
        send_hour = weekday = None
    elif cadence == "daily":
        weekday = None
    prefs = pipeline.ReaderPrefs(
        name=name, cadence=cadence, weekday=weekday, send_hour=send_hour, timezone=timezone
    )
    return Signup(address, tuple(slugs), pipeline.validate_prefs(prefs), consent)


@lru_cache(maxsize=1024)
def valid_zone(name: str) -> bool:
    if not re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*", name) or len(name) > 64:
        return False
    try:
        ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        return False
    return True


# ---------------------------------------------------------------- client address and rate limits


class ProxyTrust:
    """The client's address: `X-Forwarded-For` counts only when the peer is a trusted proxy."""

    def __init__(self, trusted: Sequence[str]) -> None:
        nets = []
        for entry in trusted:
            try:
                nets.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                log.warning("[web] trusted_proxies: %r is not an address or network; ignored", entry)
        self.nets = tuple(nets)

    def _trusted(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in net for net in self.nets)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        peer_ip = _ip(peer)
        if peer_ip is None:
            return clean_text(peer, 64) if peer else None
        if not forwarded_for or not self._trusted(peer_ip):
            return str(peer_ip)
        # Walk from the right: each trusted hop vouches for the one before it, nothing further.
        client = peer_ip
        for hop in reversed(forwarded_for.split(",")):
            hop_ip = _ip(hop)
            if hop_ip is None:
                break
            client = hop_ip
            if not self._trusted(hop_ip):
                break
        return str(client)


def _ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not value:
        return None
    text = value.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class RateLimits:
    """Requests allowed per client address; 0 switches a window off."""

    per_minute: int = 5
    per_hour: int = 20


class RateLimiter:
    """In-memory token buckets per key (one per window); each web process counts on its own."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.windows = [
            (float(cap), seconds)
            for cap, seconds in ((limits.per_minute, 60.0), (limits.per_hour, 3600.0))
            if cap > 0
        ]
        self.clock = clock
        self.buckets: dict[str, tuple[float, list[float]]] = {}

    def check(self, key: str) -> float | None:
        """Take one token; None when allowed, else the seconds until the next one."""
        now = self.clock()
        if len(self.buckets) > 50_000:
            self.buckets = {k: v for k, v in self.buckets.items() if now - v[0] < 3600}
        last, tokens = self.buckets.get(key, (now, [cap for cap, _ in self.windows]))
        tokens = [
            min(cap, left + (now - last) * cap / seconds)
            for (cap, seconds), left in zip(self.windows, tokens, strict=True)
        ]
        short = [
            (1 - left) * seconds / cap
            for (cap, seconds), left in zip(self.windows, tokens, strict=True)
            if left < 1
        ]
        if short:
            self.buckets[key] = (now, tokens)
            return max(short)
        self.buckets[key] = (now, [left - 1 for left in tokens])
        return None


# ---------------------------------------------------------------- confirmation tokens


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


# ---------------------------------------------------------------- signup


@dataclass
class SignupResult:
    """What a signup did; only operators and tests see it, never the person signing up."""

    subscription_ids: list[int] = field(default_factory=list)
    mailed: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    delivery_id: int | None = None


async def request_confirmation(
    app: pipeline.App,
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
    app: pipeline.App, signup: Signup, now: datetime, *, method: str, hourly_budget: int | None
) -> SignupResult:
    result = SignupResult()
    async with app.db.write() as s:
        to_confirm: list[tuple[Subscription, MailingList]] = []
        for slug in signup.lists:
            lst = await sources.list_by_slug(s, slug)
            if lst is None or not lst.active:
                continue
            added = await pipeline.add_subscription(
                s, lst, signup.address, signup.prefs, confirmed=False, now=now, consent=signup.consent,
                method=method,
            )  # fmt: skip
            sub = await readers.subscription_by_id(s, added.subscription_id)
            if sub is None:
                continue
            result.subscription_ids.append(sub.id)
            if sub.status == SubscriptionStatus.CONFIRMED:
                result.already.append(slug)
                continue
            last = await readers.last_confirmation_sent(s, sub.id)
            if last is not None and now - last < CONFIRM_EVERY:
                continue
            to_confirm.append((sub, lst))
        if not to_confirm:
            return result
        reader = await readers.subscriber_by_id(s, to_confirm[0][0].subscriber_id)
        if reader is None or reader.status != "active":
            return result  # bounced, complained or suppressed: never mail them again
        if hourly_budget is not None:
            sent = await readers.transactional_count_since(s, now - timedelta(hours=1))
            if sent >= hourly_budget:
                log.error(
                    "ALERT: %d confirmation emails in the last hour reached the budget of %d; "
                    "the signup of %s waits (possible list bombing)",
                    sent,
                    hourly_budget,
                    reader.email,
                )
                return result
        result.delivery_id = await _queue_confirmation(app, s, reader.email, to_confirm, now)
        for sub, lst in to_confirm:
            await readers.add_event(
                s,
                "confirmation_sent",
                now,
                subscriber_id=sub.subscriber_id,
                subscription_id=sub.id,
                delivery_id=result.delivery_id,
                list=lst.slug,
            )
            result.mailed.append(lst.slug)
    return result


def sender_name(app: pipeline.App) -> str:
    name, _ = email.utils.parseaddr(app.cfg.sender.from_)
    return name or app.cfg.sender.domain


async def _queue_confirmation(
    app: pipeline.App,
    s: Any,
    address: str,
    subs: Sequence[tuple[Subscription, MailingList]],
    now: datetime,
) -> int:
    token = confirm_token(app.keys, [sub for sub, _ in subs], now)
    rendered = rendering.render_confirmation(
        app.templates,
        rendering.ConfirmView(
            list_names=[lst.name for _, lst in subs],
            confirm_url=f"{app.base_url}/confirm/{token}",
            base_url=app.base_url,
            postal_address=app.cfg.sender.postal_address,
            sender_name=sender_name(app),
        ),
    )
    new_id = await compose.insert_delivery(
        s,
        {
            "kind": DeliveryKind.TRANSACTIONAL,
            "edition_id": None,
            "subscription_id": subs[0][0].id,
            "address": address,
            "priority": 0,
            "status": DeliveryStatus.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "message_id": messages.new_message_id(app.cfg.sender.domain),
            "subject": rendered.subject,
            "body_html": rendered.html,
            "body_text": rendered.text,
            "created_at": now,
            "updated_at": now,
        },
    )
    assert new_id is not None  # transactional mail has no dedupe key to conflict on
    return new_id


# ---------------------------------------------------------------- confirm


@dataclass(frozen=True)
class Confirmed:
    lists: tuple[str, ...]  # names of the lists now confirmed (newly or before)
    token: str | None  # one subscription's token, for a link to the preferences page


async def confirm(
    app: pipeline.App,
    pairs: Sequence[tuple[int, int]],
    now: datetime,
    *,
    ip: str | None,
    user_agent: str | None,
) -> Confirmed:
    """Confirm the pending subscriptions a valid token names. Idempotent."""
    names: list[str] = []
    token = None
    async with app.db.write() as s:
        for sub_id, stamp in pairs:
            sub = await readers.subscription_for_update(s, sub_id)
            if sub is None or _stamp(sub) != stamp:
                continue
            lst = await reports.list_by_id(s, sub.list_id)
            if lst is None or not lst.active:
                continue
            if sub.status == SubscriptionStatus.PENDING:
                sub.status, sub.confirmed_at = SubscriptionStatus.CONFIRMED, now
                sub.confirm_ip = ip
                sub.confirm_user_agent = clean_text(user_agent or "", TEXT_MAX) or None
                sub.next_due_at = pipeline.next_slot(sub, lst, now)
                await readers.add_event(
                    s,
                    "confirmed",
                    now,
                    subscriber_id=sub.subscriber_id,
                    subscription_id=sub.id,
                    method="link",
                    ip=ip,
                )
            if sub.status == SubscriptionStatus.CONFIRMED:
                names.append(lst.name)
                token = token or sub.token
    return Confirmed(tuple(names), token)


async def resend_confirmation(
    app: pipeline.App, pairs: Sequence[tuple[int, int]], now: datetime, *, hourly_budget: int | None
) -> SignupResult:
    """A fresh link for the still-pending subscriptions of an expired one (same 24-hour limit)."""
    async with app.db.read() as s:
        slugs, address = [], None
        for sub_id, stamp in pairs:
            sub = await readers.subscription_by_id(s, sub_id)
            if sub is None or _stamp(sub) != stamp or sub.status != SubscriptionStatus.PENDING:
                continue
            lst = await reports.list_by_id(s, sub.list_id)
            reader = await readers.subscriber_by_id(s, sub.subscriber_id)
            if lst is None or reader is None or (address and reader.email != address):
                continue
            address = reader.email
            slugs.append(lst.slug)
    if not slugs or address is None:
        return SignupResult()
    # Re-asking through the signup path keeps every rule in one place; a pending row is left as it is.
    signup = Signup(address, tuple(slugs), pipeline.ReaderPrefs(), pipeline.Consent())
    return await request_confirmation(app, signup, now, method="resend", hourly_budget=hourly_budget)


# ---------------------------------------------------------------- preferences and leaving


@dataclass(frozen=True)
class Reader:
    """Everything the preferences page shows, found from one subscription's token."""

    token: str
    email: str
    name: str
    prefs: pipeline.ReaderPrefs
    subscribed: tuple[str, ...]  # confirmed list slugs
    pending: tuple[str, ...]


async def reader_for_token(app: pipeline.App, token: str) -> Reader | None:
    async with app.db.read() as s:
        sub = await readers.subscription_by_token(s, token)
        reader = await readers.subscriber_by_id(s, sub.subscriber_id) if sub else None
        if sub is None or reader is None:
            return None
        subs = await readers.subscriptions_of(s, reader.id)
    prefs = pipeline.ReaderPrefs(
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
    )


@dataclass
class PrefsOutcome:
    changed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    confirmation_for: list[str] = field(default_factory=list)


def _same_day_floor(sub: Subscription, lst: MailingList, now: datetime) -> datetime:
    """Slots are looked for after this: never a second digest on the local day of the last one."""
    _, tz = pipeline.reader_schedule(sub, lst)
    zone = ZoneInfo(tz)
    today = now.astimezone(zone).date()
    if sub.last_digest_at is not None and sub.last_digest_at.astimezone(zone).date() >= today:
        midnight = schedule.resolve_local(
            datetime.combine(today + timedelta(days=1), datetime.min.time()), zone
        )
        return max(now, midnight - timedelta(microseconds=1))
    return now


async def change_preferences(
    app: pipeline.App,
    token: str,
    wanted: Sequence[str],
    prefs: pipeline.ReaderPrefs,
    now: datetime,
    *,
    consent: pipeline.Consent,
    hourly_budget: int | None = None,
) -> PrefsOutcome | None:
    """Apply the preferences form: new schedule and name, lists left, lists joined (double opt-in)."""
    prefs = pipeline.validate_prefs(prefs)
    outcome = PrefsOutcome()
    async with app.db.write() as s:
        base = await readers.subscription_by_token_for_update(s, token)
        reader = await readers.subscriber_by_id(s, base.subscriber_id) if base else None
        if base is None or reader is None:
            return None
        if prefs.name != reader.name:
            await readers.add_event(
                s, "preferences_changed", now, subscriber_id=reader.id, name=[reader.name, prefs.name]
            )
            reader.name, reader.updated_at = prefs.name, now
        current = await readers.subscriptions_of(s, reader.id)
        have = {lst.slug for sub, lst in current if sub.status == SubscriptionStatus.CONFIRMED}
        for sub, lst in current:
            if sub.status != SubscriptionStatus.CONFIRMED:
                continue
            if lst.slug not in wanted:
                await pipeline.unsubscribe(s, sub, "preferences", now)
                outcome.left.append(lst.slug)
                continue
            before = (sub.cadence, sub.weekday, sub.send_hour, sub.timezone)
            after = (prefs.cadence, prefs.weekday, prefs.send_hour, prefs.timezone)
            if before == after:
                continue
            sub.cadence, sub.weekday, sub.send_hour, sub.timezone = after
            sub.next_due_at = pipeline.next_slot(sub, lst, _same_day_floor(sub, lst, now))
            await readers.add_event(
                s,
                "preferences_changed",
                now,
                subscriber_id=reader.id,
                subscription_id=sub.id,
                cadence=sub.cadence,
                weekday=sub.weekday,
                send_hour=sub.send_hour,
                timezone=sub.timezone,
                next_due_at=sub.next_due_at.isoformat(),
            )
            outcome.changed.append(lst.slug)
        address = reader.email
    joining = tuple(slug for slug in wanted if slug not in have)
    if joining:
        signup = Signup(address, joining, replace(prefs, name=""), consent)
        done = await request_confirmation(app, signup, now, method="preferences", hourly_budget=hourly_budget)
        outcome.confirmation_for = done.mailed
    return outcome


async def unsubscribe_token(app: pipeline.App, token: str, method: str, now: datetime) -> str | None:
    """Leave the token's list; the list's name, or None for an unknown token. Idempotent."""
    async with app.db.write() as s:
        sub = await readers.subscription_by_token_for_update(s, token)
        lst = await reports.list_by_id(s, sub.list_id) if sub else None
        if sub is None or lst is None:
            return None
        await pipeline.unsubscribe(s, sub, method, now)
        return lst.name


async def leave_everything(app: pipeline.App, token: str, now: datetime) -> list[str] | None:
    """Unsubscribe the token's reader from every list; None for an unknown token."""
    async with app.db.write() as s:
        base = await readers.subscription_by_token_for_update(s, token)
        if base is None:
            return None
        left = []
        for sub, lst in await readers.subscriptions_of(s, base.subscriber_id):
            if sub.status != SubscriptionStatus.UNSUBSCRIBED:
                await pipeline.unsubscribe(s, sub, "link", now)
                left.append(lst.name)
        return left


# ---------------------------------------------------------------- mail to unsub+TOKEN@


async def handle_unsubscribe_mail(
    app: pipeline.App, raw: bytes, envelope_rcpt: str | None, now: datetime | None = None
) -> str:
    """Unsubscribe the reader a message to `unsub+TOKEN@…` names. Never replies to anything.

    The envelope recipient decides; without one (a mailbox file), Delivered-To, X-Original-To and
    To are tried in that order. Returns "unsubscribed", "already", "unknown" or "not-unsubscribe".
    """
    now = now or pipeline.utcnow()
    candidates = [envelope_rcpt] if envelope_rcpt else []
    if not candidates:
        msg = email.message_from_bytes(raw[:65536], policy=email.policy.compat32)
        for name in ("Delivered-To", "X-Original-To", "To"):
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
        sub = await readers.subscription_by_token_for_update(s, token)
        if sub is None:
            # Some MTAs fold the case of local parts; the token is long enough to match without it.
            sub = await readers.subscription_by_token_casefold(s, token)
        if sub is None:
            log.info("mail to an unknown unsubscribe address ignored")
            return "unknown"
        changed = await pipeline.unsubscribe(s, sub, "mailto", now)
    return "unsubscribed" if changed else "already"


# ---------------------------------------------------------------- housekeeping


async def purge_stale_signups(
    app: pipeline.App, now: datetime, older_than: timedelta = PENDING_LIFETIME
) -> int:
    """Forget signups nobody confirmed within a week (list bombing leaves nothing behind)."""
    async with app.db.write() as s:
        removed = await readers.delete_pending_before(s, now - older_than)
        await readers.delete_readers_without_history(s)
    if removed:
        log.info("purged %d unconfirmed signup(s) older than %s", removed, older_than)
    return removed
