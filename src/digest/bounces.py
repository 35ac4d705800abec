"""The bounce inbox at pipeline level: turn what arrives there into deliveries, events and suppressions.

DESIGN "The flow" step 5; STANDARDS section D and items 18 and 23. `inbound.analyse` (pure) says
what a message means; this module applies that verdict to the database. Messages arrive through
the embedded SMTP listener (bounce_listener.py, part of `digest run` and `digest inbound`) or
from a mailbox the operator points at (bounce_mailboxes.py, `digest bounces process`); the
operator's report and lifting a suppression are bounce_admin.py's.

Decisions, one line each:

- A bounce (`Action: failed`) turns a `sent` or `unknown` delivery into `failed` with the DSN's
  code and diagnostic; the reader's watermark is NOT rolled back: the digest went out, and the
  next one carries on from it (an SMTP-time failure, by contrast, rolls back: delivery.py).
- Every verdict about a known delivery becomes one event linked to it: `bounced` (hard, soft,
  unknown), `policy_rejection`, `delivery_delayed` or `complained`; its detail holds the class,
  status, diagnostic, Final-Recipient and the raw message.
- The raw message is kept in the event detail (JSON, decoded as UTF-8 with replacement, cut at
  64 KB with `raw_truncated`), not in files beside the config: the database is the one store every
  process and machine shares (several workers on PostgreSQL have no common folder), and it is
  backed up with the events it explains. `trim_raw_bounces` drops it after 30 days.
- Hard → the reader is suppressed (`bounced`) at once. Soft → Mailman scoring over the reader's
  `bounced` events (SMTP-time and DSN) since an operator last lifted a suppression; the score is
  stored in Subscriber.bounce_score. Only digests suppress or score, as at SMTP time: test sends
  have no reader, and a confirmation that bounces is simply never confirmed.
- Policy (5.7.x, ...) never suppresses: a WARNING names the delivery, edition and list, and the
  delivery breaker (delivery.py) is what pauses an edition when the relay itself is refused.
- Unknown-class bounces (bare 550, 5.0.0, ...) fail the delivery and are recorded, never scored.
- A delayed DSN is recorded on the delivery and changes nothing else; auto-replies change nothing.
- A complaint marks the reader `complained` (suppressed), unsubscribes the subscription it names
  (method `complaint`), and is linked to its delivery; a complaint that names only a subscription
  token is linked to that reader's latest digest that arrived (`attributed` in the detail).
- Complaint rate (STANDARDS item 23): per edition (complaints / its delivered messages) and per
  sending day (complaints about the digests sent that UTC day / digests delivered that day). At the
  warning threshold a WARNING is logged; at the pause threshold the edition (per edition) or every
  edition still sending (per day) is paused and an `ALERT` is logged at CRITICAL. Each also raises
  an operator alert (alerting.py), as does a policy rejection.
- A DSN for a delivery whose outcome the worker has not committed yet (`sending`) is `in_flight`:
  the listener waits up to 10 s, then answers 451 so the MTA retries; a mailbox run counts it and
  can simply be run again.
- A message already recorded (same Message-ID, else the same bytes) is counted `duplicate` and
  changes nothing, so a mailbox can be processed again safely; mailbox files are never modified.
- Forged, malformed or unknown VERP addresses change nothing: they are counted and logged.
- Mail to unsub+TOKEN@ goes to readers.handle_unsubscribe_mail: never answered (item 18).
- Thresholds come from `[bounce]` when the config has them (see BouncePolicy), else the defaults
  of STANDARDS items 23 and 32.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from digest import bootstrap, bounce_rules, inbound, readers
from digest.alerting import Alert, raise_alert
from digest.config import Config
from digest.models import (
    INBOUND_EVENTS,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    EditionStatus,
    SubscriberStatus,
    SubscriptionStatus,
)
from digest.store import inbound as inbound_store
from digest.store import ledger
from digest.store import readers as readers_store
from digest.store import reports as reports_store

log = logging.getLogger("digest.bounces")

RAW_LIMIT = 64 * 1024
# Outcomes of one message, in the order reports show them.
OUTCOMES = (
    "hard",
    "soft",
    "policy",
    "unknown",
    "delayed",
    "complaint",
    "unsubscribe",
    "auto_reply",
    "duplicate",
    "in_flight",
    "forged",
    "unknown_delivery",
    "ignored",
)
_BASIC_CODE = re.compile(r"^\s*(?:[A-Za-z][\w-]*\s*;\s*)?([245]\d\d)(?=[\s-]|$)")


@dataclass(frozen=True)
class BouncePolicy:
    """Scoring (STANDARDS item 32), complaint thresholds (item 23) and raw-message retention."""

    hard: float = 1.0
    soft: float = 0.5
    limit: float = 5.0
    quiet: timedelta = timedelta(days=7)
    complaint_warn: float = 0.001
    complaint_pause: float = 0.003
    raw_limit: int = RAW_LIMIT
    raw_retention: timedelta = timedelta(days=30)

    @classmethod
    def from_config(cls, cfg: Config) -> BouncePolicy:
        """`[bounce]` settings when the config defines them (soft_score, score_limit, quiet,
        complaint_warn, complaint_pause, raw_retention), else the defaults."""
        b: Any = cfg.bounce
        d = cls()
        return cls(
            soft=float(getattr(b, "soft_score", d.soft)),
            limit=float(getattr(b, "score_limit", d.limit)),
            quiet=getattr(b, "quiet", d.quiet),
            complaint_warn=float(getattr(b, "complaint_warn", d.complaint_warn)),
            complaint_pause=float(getattr(b, "complaint_pause", d.complaint_pause)),
            raw_retention=getattr(b, "raw_retention", d.raw_retention),
        )


@dataclass
class ProcessReport:
    """What a batch of inbound messages did: one outcome per message, and what followed."""

    counts: Counter[str] = field(default_factory=Counter)
    suppressed: int = 0
    failed_deliveries: int = 0
    paused_editions: list[int] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return sum(self.counts.values())

    def add(self, other: Handled) -> None:
        self.counts[other.outcome] += 1
        self.suppressed += int(other.suppressed)
        self.failed_deliveries += int(other.delivery_failed)
        for e in other.paused:
            if e not in self.paused_editions:
                self.paused_editions.append(e)


@dataclass(frozen=True)
class Handled:
    """The outcome of one inbound message."""

    outcome: str
    reason: str
    delivery_id: int | None = None
    suppressed: bool = False
    delivery_failed: bool = False
    paused: tuple[int, ...] = ()


def bounce_domain(cfg: Config) -> str:
    """The domain VERP return paths and unsub+ addresses use (delivery.py uses the same)."""
    return cfg.bounce.domain or cfg.sender.domain


def _inbound_id(raw: bytes) -> str:
    """The bounce's own Message-ID, else a hash of its bytes: what `duplicate` compares."""
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw[:65536])
        mid = " ".join(str(headers.get("Message-ID") or "").split())
    except Exception:  # a header we cannot read: fall back to the bytes
        mid = ""
    return f"mid:{mid[:300]}" if mid else "sha256:" + hashlib.sha256(raw).hexdigest()


def _raw_detail(raw: bytes, policy: BouncePolicy) -> dict[str, Any]:
    cut = raw[: policy.raw_limit]
    return {"raw": cut.decode("utf-8", "replace"), "raw_truncated": len(raw) > policy.raw_limit}


def _code_of(report: inbound.RecipientReport | None) -> int | None:
    if report is None:
        return None
    m = _BASIC_CODE.match(report.diagnostic)
    return int(m.group(1)) if m else None


def _main_report(verdict: inbound.InboundVerdict) -> inbound.RecipientReport | None:
    klass = verdict.bounce_class
    return next((r for r in verdict.recipients if r.bounce_class is klass), None)


def _recipients(verdict: inbound.InboundVerdict) -> list[dict[str, Any]]:
    return [
        {
            "final_recipient": r.final_recipient,
            "action": r.action,
            "status": r.status,
            "class": str(r.bounce_class),
        }
        for r in verdict.recipients[:20]
    ]


async def handle_message(
    app: bootstrap.App,
    raw: bytes,
    envelope_rcpt: str | None,
    now: datetime,
    *,
    envelope_sender: str | None = None,
    policy: BouncePolicy | None = None,
) -> Handled:
    """Analyse one message that reached the bounce inbox and apply what it means."""
    policy = policy or BouncePolicy.from_config(app.cfg)
    verdict = inbound.analyse(raw, envelope_rcpt, app.keys, envelope_sender=envelope_sender)
    if verdict.kind == "unsubscribe":
        result = await readers.handle_unsubscribe_mail(app, raw, envelope_rcpt, now)
        if result in ("unsubscribed", "already"):
            return Handled("unsubscribe", f"mailto unsubscribe: {result}")
        log.info("inbound: unsubscribe mail with an unknown token ignored")
        return Handled("ignored", f"mailto unsubscribe: {result}")
    if verdict.kind == "ignored":
        outcome = "forged" if verdict.reason.startswith("forged") else "ignored"
        level = logging.WARNING if outcome == "forged" else logging.INFO
        log.log(level, "inbound: message ignored: %s", verdict.reason)
        return Handled(outcome, verdict.reason, verdict.delivery_id)
    if verdict.kind == "auto_reply":
        log.info("inbound: auto-reply for delivery %s ignored: %s", verdict.delivery_id, verdict.reason)
        return Handled("auto_reply", verdict.reason, verdict.delivery_id)
    if verdict.kind == "complaint":
        return await _complaint(app, verdict, raw, now, policy)
    return await _bounce(app, verdict, raw, now, policy)


async def _bounce(
    app: bootstrap.App, verdict: inbound.InboundVerdict, raw: bytes, now: datetime, policy: BouncePolicy
) -> Handled:
    assert verdict.delivery_id is not None  # analyse only says bounce/delayed with a checked VERP id
    inbound_id = _inbound_id(raw)
    klass = verdict.bounce_class or bounce_rules.BounceClass.UNKNOWN
    main = _main_report(verdict)
    async with app.db.write() as s:
        found = await ledger.load_claimed(s, [verdict.delivery_id])
        if not found:
            log.warning("inbound: bounce for delivery %s, which does not exist", verdict.delivery_id)
            return Handled("unknown_delivery", "no such delivery", verdict.delivery_id)
        c = found[0]
        d, reader = c.delivery, c.subscriber
        if d.status == DeliveryStatus.SENDING:
            # A fast relay can bounce before the worker has committed "sent": come back later.
            return Handled("in_flight", "the delivery's outcome is not recorded yet", d.id)
        if await inbound_store.inbound_seen(s, inbound_id, reader.id if reader else None, d.id):
            return Handled("duplicate", "already recorded", d.id)
        detail: dict[str, Any] = {
            "at": "dsn",
            "bounce_class": str(klass),
            "status": main.status if main else None,
            "code": _code_of(main),
            "diagnostic": (main.diagnostic if main else "")[:1000],
            "final_recipient": main.final_recipient if main else None,
            "recipients": _recipients(verdict),
            "reason": verdict.reason[:500],
            "edition_id": d.edition_id,
            "inbound_id": inbound_id,
            **_raw_detail(raw, policy),
        }
        ids = {"subscriber_id": reader.id if reader else None, "subscription_id": d.subscription_id}
        if verdict.kind == "delayed":
            await readers_store.add_event(s, "delivery_delayed", now, delivery_id=d.id, **ids, **detail)
            log.info("inbound: delivery %s delayed: %s", d.id, verdict.reason)
            return Handled("delayed", verdict.reason, d.id)

        reply = f"DSN {detail['status'] or 'no code'}: {detail['diagnostic']}".strip()
        failed = await inbound_store.mark_delivery_bounced(s, d.id, detail["code"], reply, now)
        scored = (
            reader is not None
            and d.kind == DeliveryKind.DIGEST
            and klass in (bounce_rules.BounceClass.HARD, bounce_rules.BounceClass.SOFT)
        )
        history = await inbound_store.bounce_history(s, reader.id) if scored and reader is not None else []
        kind = "policy_rejection" if klass is bounce_rules.BounceClass.POLICY else "bounced"
        await readers_store.add_event(s, kind, now, delivery_id=d.id, **ids, **detail)
        if klass is bounce_rules.BounceClass.POLICY:
            what = (
                f"policy rejection reported for delivery {d.id} (edition {d.edition_id}, "
                f"list {c.mailing_list.slug if c.mailing_list else '-'}): "
                f"{detail['diagnostic'] or verdict.reason}; "
                "the reader stays subscribed; check authentication and reputation"
            )
            log.warning("%s", what)
            raise_alert(Alert("relay_policy", "a receiver reports a policy rejection", what, now))
        suppressed = False
        if scored and reader is not None:
            suppressed = await _score(s, reader.id, reader.status, history, klass, detail, now, policy)
        log.info("inbound: delivery %s bounced (%s): %s", d.id, klass, verdict.reason)
        return Handled(str(klass), verdict.reason, d.id, suppressed, failed)


async def _score(
    s: AsyncSession,
    subscriber_id: int,
    status: str,
    before: list[tuple[datetime, str]],
    klass: bounce_rules.BounceClass,
    detail: dict[str, Any],
    now: datetime,
    policy: BouncePolicy,
) -> bool:
    """Mailman scoring over the reader's earlier bounces and this one; True if this suppressed them."""
    events: list[tuple[datetime, bounce_rules.BounceClass]] = [(now, klass)]
    for when, name in before:
        with contextlib.suppress(ValueError):
            events.append((when, bounce_rules.BounceClass(name)))
    score, suppress = bounce_rules.bounce_score(
        events, now, hard=policy.hard, soft=policy.soft, limit=policy.limit, quiet=policy.quiet
    )
    await inbound_store.set_bounce_score(s, subscriber_id, score, now)
    if not suppress or status != SubscriberStatus.ACTIVE:
        return False
    why = (
        f"hard bounce ({detail['status'] or 'DSN'}): {detail['diagnostic']}"
        if klass is bounce_rules.BounceClass.HARD
        else f"soft-bounce score {score:g} over {policy.limit:g}: {detail['diagnostic']}"
    )
    await ledger.suppress_subscriber(s, subscriber_id, SubscriberStatus.BOUNCED, now, why)
    log.info("reader %s suppressed: %s", subscriber_id, why)
    return True


async def _complaint(
    app: bootstrap.App, verdict: inbound.InboundVerdict, raw: bytes, now: datetime, policy: BouncePolicy
) -> Handled:
    inbound_id = _inbound_id(raw)
    async with app.db.write() as s:
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
        if await inbound_store.inbound_seen(s, inbound_id, reader.id, None):
            return Handled("duplicate", "already recorded", d.id if d else None)
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
            inbound_id=inbound_id,
            **_raw_detail(raw, policy),
        )
        suppressed = False
        if reader.status not in (SubscriberStatus.COMPLAINED, SubscriberStatus.SUPPRESSED):
            await ledger.suppress_subscriber(
                s, reader.id, SubscriberStatus.COMPLAINED, now, f"spam complaint: {verdict.reason}"
            )
            suppressed = True
        if sub.status != SubscriptionStatus.UNSUBSCRIBED:
            await readers.unsubscribe(s, sub, "complaint", now)
        paused = await _complaint_rates(s, d, now, policy)
    log.warning("inbound: spam complaint from reader %s (delivery %s)", reader.id, d.id if d else "-")
    return Handled("complaint", verdict.reason, d.id if d else None, suppressed, False, tuple(paused))


async def _complaint_rates(
    s: AsyncSession, d: Delivery | None, now: datetime, policy: BouncePolicy
) -> list[int]:
    """STANDARDS item 23: warn, or pause and alert, on the edition's and the sending day's rate."""
    paused: list[int] = []
    if d is not None and d.edition_id is not None:
        complaints, delivered = await inbound_store.edition_complaint_counts(s, d.edition_id)
        rate = bounce_rules.complaint_rate(complaints, delivered)
        action = bounce_rules.complaint_action(rate, policy.complaint_warn, policy.complaint_pause)
        what = f"edition {d.edition_id}: {complaints} complaint(s) / {delivered} delivered = {rate:.3%}"
        if action == "pause":
            edition = await reports_store.edition_by_id(s, d.edition_id)
            if edition is not None and edition.status == EditionStatus.SENDING:
                reason = f"complaint rate {rate:.3%} reached {policy.complaint_pause:.3%}"
                await ledger.pause_edition(s, d.edition_id, reason, now)
                paused.append(d.edition_id)
                _complaint_alert("complaint rate too high, edition paused", what, now)
            else:
                _complaint_alert("complaint rate too high (edition no longer sending)", what, now)
        elif action == "warn":
            _complaint_warning(f"complaint rate above {policy.complaint_warn * 100:.3f}%: {what}", now)
    day = (d.sent_at if d is not None and d.sent_at is not None else now).astimezone(UTC)
    start = day.replace(hour=0, minute=0, second=0, microsecond=0)
    complaints, delivered = await inbound_store.sent_day_complaint_counts(s, start, start + timedelta(days=1))
    if complaints:
        rate = bounce_rules.complaint_rate(complaints, delivered)
        action = bounce_rules.complaint_action(rate, policy.complaint_warn, policy.complaint_pause)
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
            _complaint_warning(f"daily complaint rate above {policy.complaint_warn * 100:.3f}%: {what}", now)
    return paused


def _complaint_alert(title: str, what: str, now: datetime) -> None:
    log.critical("ALERT: %s: %s", title, what)
    raise_alert(Alert("complaint_rate", title, f"{title}: {what}", now))


def _complaint_warning(message: str, now: datetime) -> None:
    log.warning("%s", message)
    raise_alert(Alert("complaint_warning", "complaint rate above the warning threshold", message, now))


async def trim_raw_bounces(app: bootstrap.App, now: datetime, *, keep: timedelta | None = None) -> int:
    """Drop the raw message from inbound events older than the retention (30 days by default)."""
    keep = keep if keep is not None else BouncePolicy.from_config(app.cfg).raw_retention
    async with app.db.write() as s:
        trimmed = await inbound_store.trim_event_raw(s, INBOUND_EVENTS, now - keep)
    if trimmed:
        log.info("trimmed the raw message from %d bounce event(s) older than %s", trimmed, keep)
    return trimmed
